"""MkDocs hooks: put the proposals and the zoo on the site.

- every ``proposals/<topic>/**`` page, picture and JSON result becomes a site file,
  so each proposal's README.md is its page and relative links work on GitHub too;
- every zoo file listed in the manifest is published for download, with a Graphviz
  picture of each case's graph rendered at build time;
- the conformance matrix JSON is published beside its page;
- every page gets the markup of :mod:`generator.site_markup` (citation links, pictures
  linked to their full size, inline graphs in scroll boxes with their SVG files).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("mkdocs.hooks.site")  # a warning fails the strict build
_FIGURES: dict[str, str] = {}  # figures/<name>.svg -> SVG text, written after the build

PUBLISHED_SUFFIXES = {".md", ".svg", ".png", ".json"}
SKIPPED_PARTS = {"tests", "__pycache__", "templates"}


def _proposal_files(config) -> list[File]:
    files = []
    for path in sorted((ROOT / "proposals").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in PUBLISHED_SUFFIXES and not SKIPPED_PARTS & set(rel.parts):
            files.append(File(rel.as_posix(), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def _zoo_files(config) -> list[File]:
    import onnx

    from generator.graphs import graph_svg
    from generator.zoo import ZOO, load_manifest

    files = []
    for case_id, entry in load_manifest()["cases"].items():
        for rel in entry["files"]:
            files.append(File(f"zoo/{case_id}/{rel}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
        model = onnx.load(str(ZOO / case_id / "model.onnx"), load_external_data=False)
        files.append(File.generated(config, f"zoo/{case_id}/graph.svg", content=graph_svg(model)))
    return files


def on_config(config):
    # MkDocs restores sys.path after loading a hook; exec blocks import generator and proposals.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


@event_priority(100)  # before plugins that index files (htmlproofer, blog)
def on_files(files: Files, config) -> Files:
    from generator.docs import load_matrix
    from generator.verify import MATRIX_JSON

    for file in [*_proposal_files(config), *_zoo_files(config)]:
        files.append(file)
    load_matrix()
    files.append(File.generated(config, "conformance.json", abs_src_path=str(MATRIX_JSON)))
    return files


# A page asks for generated Markdown with a marker naming a function that returns it:
# <!-- generated: generator.docs:catalogue_markdown -->. Unlike exec-block output, the
# result is ordinary page Markdown, so MkDocs resolves and validates its links.
GENERATED = re.compile(r"<!-- generated: ([\w.]+):(\w+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    from generator.site_markup import link_citations, link_pictures

    def expand(match: re.Match) -> str:
        return getattr(importlib.import_module(match[1]), match[2])()

    markdown = GENERATED.sub(expand, markdown)
    markdown = link_citations(markdown, lambda message: log.warning(f"{page.file.src_path}: {message}"))
    return link_pictures(markdown)


def on_page_content(html: str, page, config, files) -> str:
    from generator.site_markup import wrap_graphs

    return wrap_graphs(html, page.url.count("/"), _FIGURES)


def on_post_build(config) -> None:
    """Drop the CDN ``@import``s of markdown-exec's pyodide stylesheet (this site runs no
    pyodide blocks): nothing on the site may point off the machine."""
    from generator.site_markup import FIGURE_DIR

    css = Path(config["site_dir"]) / "assets" / "_markdown_exec_pyodide.css"
    if css.exists():
        css.write_text(re.sub(r'@import\s+"https?://[^"]*";?', "", css.read_text()))
    figures = Path(config["site_dir"]) / FIGURE_DIR
    figures.mkdir(exist_ok=True)
    for name, svg in sorted(_FIGURES.items()):
        (figures / name).write_text(svg)


def on_serve(server, config, builder):
    for folder in ("proposals", "generator", "zoo"):
        server.watch(str(ROOT / folder))
    return server
