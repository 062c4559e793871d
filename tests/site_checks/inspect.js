// What a reader would trip over on the page as rendered; each key lists one defect class.
// Run by tests/test_site_browser.py in headless Chromium after every image has loaded.
const article = document.querySelector("article.md-content__inner") || document.body;
const out = { prose: [], overflow: [], broken: [], pictures: [], citations: [], markers: [], dark: [] };
const short = (s) => s.replace(/\s+/g, " ").trim().slice(0, 90);
const inCode = (node) => node.closest("pre, code, .highlight, script, style, svg, kbd");

// 1. Python rendered as prose: code-shaped text outside every code element.
const PYTHON = /(^|\s)(def [A-Za-z_]\w*\(|class [A-Za-z_]\w*[(:]|from [\w.]+ import \w|self\.\w+ = |@dataclass|""")/;
for (const el of article.querySelectorAll("p, li, h1, h2, h3, h4, h5, h6, td")) {
  if (inCode(el)) continue;
  const copy = el.cloneNode(true);
  copy.querySelectorAll("pre, code, kbd, svg, .highlight, ul, ol").forEach((c) => c.remove());
  if (PYTHON.test(copy.textContent)) out.prose.push(short(copy.textContent));
}

// 2. Nothing wider than the text column unless a scroll wrapper holds it; no word in a
// table cell broken across lines (identifiers split mid-word, numbers wrapping as 2.4e- / 07).
// Material lets code blocks and table wrappers bleed into the margin on a phone: the
// limit is the content box around the article.
const column = Math.max(article.clientWidth, article.parentElement.clientWidth);
const scrolls = (el) => {
  for (let a = el.parentElement; a && a !== article.parentElement; a = a.parentElement) {
    const style = getComputedStyle(a);
    if (["auto", "scroll"].includes(style.overflowX) && a.clientWidth <= column + 1) return true;
  }
  return false;
};
for (const el of article.querySelectorAll("table, img, svg, pre")) {
  if (el.closest(".twemoji, .md-icon, .md-clipboard") || el.parentElement.closest("svg")) continue;
  const width = el.getBoundingClientRect().width;
  if (width > column + 1 && !scrolls(el) && !(el.tagName === "PRE" && getComputedStyle(el).overflowX !== "visible"))
    out.overflow.push(`${el.tagName.toLowerCase()} ${Math.round(width)}px in a ${column}px column`);
}
if (document.documentElement.scrollWidth > window.innerWidth + 1)
  out.overflow.push(`page scrolls sideways: ${document.documentElement.scrollWidth}px > ${window.innerWidth}px`);
const range = document.createRange();
for (const cell of article.querySelectorAll("td, th")) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    // A break after the hyphen of a compound (gather-per-slot, Attention-25, 30-token) or
    // after a parenthesis or comma of a signature is ordinary typesetting; one inside a
    // number (2.4e-/07) or an identifier is not.
    for (const m of node.textContent.matchAll(/\S{2,}/g)) {
      let start = m.index;
      for (const piece of m[0].split(/(?<=(?<=[A-Za-z]{2})-|-(?=[A-Za-z]{2})|[(),])/)) {
        range.setStart(node, start);
        range.setEnd(node, start + piece.length);
        start += piece.length;
        const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (tops.size > 1) out.broken.push(m[0].slice(0, 60));
      }
    }
  }
}

// 3. Every picture legible at its displayed size (at least 3/4 of its natural size) or a
// link to its full-size file.
const linked = (el) => !!el.closest("a[href]");
for (const img of article.querySelectorAll("img")) {
  if (!img.naturalWidth || linked(img) || img.closest(".md-author, .md-post__authors")) continue;
  const ratio = img.getBoundingClientRect().width / img.naturalWidth;
  if (ratio < 0.75) out.pictures.push(`${img.getAttribute("src")} shown at ${Math.round(ratio * 100)}%`);
}
for (const svg of article.querySelectorAll("svg")) {
  if (svg.parentElement.closest("svg") || svg.closest(".twemoji, .md-icon, .md-clipboard") || linked(svg)) continue;
  const length = svg.width.baseVal;
  if (!svg.getAttribute("width") || length.unitType === SVGLength.SVG_LENGTHTYPE_PERCENTAGE) continue;
  length.convertToSpecifiedUnits(SVGLength.SVG_LENGTHTYPE_PX);
  const ratio = svg.getBoundingClientRect().width / length.value;
  if (ratio < 0.75) out.pictures.push(`inline svg ${Math.round(length.value)}px shown at ${Math.round(ratio * 100)}%`);
}

// 4. Every issue or PR citation (#1234, onnx#1234, owner/repo#1234) is a link.
const CITE = /(?:^|[^\w#&\/.-])((?:[\w.-]+\/[\w.-]+|[A-Za-z][\w.-]*)?#\d{3,5})(?!\w)/g;
const texts = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
for (let node = texts.nextNode(); node; node = texts.nextNode()) {
  const parent = node.parentElement;
  if (!parent || parent.closest("a, pre, .highlight, script, style, svg")) continue;
  for (const m of node.textContent.matchAll(CITE)) out.citations.push(m[1]);
}

// 5. No raw marker text: an unexpanded generated marker or snippet line.
for (const marker of ["<!-- generated", "--8<--"]) {
  const text = document.body.innerText;
  const at = text.indexOf(marker);
  if (at >= 0) out.markers.push(short(text.slice(at, at + 80)));
}

// 6. (dark mode) text of inline pictures drawn on the page background has contrast >= 3.
const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
const lum = ([r, g, b]) => {
  const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const background = (el) => {
  for (let a = el; a; a = a.parentElement) {
    const c = rgb(getComputedStyle(a).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c;
  }
  return [255, 255, 255];
};
if (document.body.getAttribute("data-md-color-scheme") === "slate") {
  for (const text of article.querySelectorAll("svg g.edge text, svg g.graph > text")) {
    const fill = rgb(getComputedStyle(text).fill);
    if (fill.length < 3) continue;
    const [a, b] = [lum(fill), lum(background(text.closest("svg")))].sort((x, y) => y - x);
    if ((a + 0.05) / (b + 0.05) < 3) out.dark.push(`${short(text.textContent)} (contrast ${((a + 0.05) / (b + 0.05)).toFixed(1)})`);
  }
}
return out;
