// MathJax for pymdownx.arithmatex (generic mode): the `$...$` math of the docstrings.
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
};
document$.subscribe(() => MathJax.typesetPromise());
