// MathJax set-up for pymdownx.arithmatex (generic mode): $...$ and $$...$$ in the pages
// become \(...\) and \[...\] inside elements of class "arithmatex".
// The renderer is the bundled javascripts/mathjax/tex-svg-full.js (MathJax 3.2.2, SVG
// output, every TeX extension built in), so equations render without network access.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  svg: {
    fontCache: "global"
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
