"""Package data: the shipped parameter files, targets, LEMUR statistics and published numbers."""
