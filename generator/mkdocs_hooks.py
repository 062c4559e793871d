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

    from generator.docs import zoo_site_dir
    from generator.graphs import graph_svg
    from generator.zoo import case_dir, load_manifest, manifest_path

    files = [File(manifest_path().relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"], False)]
    for case_id, entry in load_manifest()["cases"].items():
        folder = zoo_site_dir(case_id)
        for rel in entry["files"]:
            files.append(File(f"{folder}/{rel}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
        model = onnx.load(str(case_dir(case_id) / "model.onnx"), load_external_data=False)
        files.append(File.generated(config, f"{folder}/graph.svg", content=graph_svg(model)))
    files.append(File.generated(config, ZOO_ZIP, content=zoo_zip()))
    return files


ZOO_ZIP = "zoo.zip"


def zoo_zip() -> bytes:
    """The zoo as one archive: manifest.json and every file it lists, in manifest order,
    with fixed timestamps and permissions, so the same zoo gives the same bytes."""
    import io
    import zipfile

    from generator.zoo import case_dir, load_manifest, manifest_path

    def add(archive: zipfile.ZipFile, path: Path) -> None:
        info = zipfile.ZipInfo(path.relative_to(ROOT).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, path.read_bytes(), compresslevel=6)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        add(archive, manifest_path())
        for case_id, entry in load_manifest()["cases"].items():
            for rel in entry["files"]:
                add(archive, case_dir(case_id) / rel)
    return buffer.getvalue()


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


def on_page_markdown(markdown: str, page, config, files) -> str:
    from generator.markdown import expand_generated
    from generator.site_markup import link_citations, link_pictures

    markdown = expand_generated(markdown)
    if FEEDBACK_CATEGORIES & set(page.meta.get("categories", [])):
        markdown = markdown.rstrip() + "\n\n" + feedback_note(config)
    markdown = link_citations(markdown, lambda message: log.warning(f"{page.file.src_path}: {message}"))
    return link_pictures(markdown)


FEEDBACK_CATEGORIES = {"RFC", "Request for feedback"}
WG_CHARTER = "https://github.com/onnx/working-groups/tree/main/generative-ai"


def feedback_note(config) -> str:
    """Where a reader answers a post that asks for feedback."""
    repo = config.get("repo_url") or ""
    issues = f"[open an issue]({repo.rstrip('/')}/issues) on this project" if repo else "open an issue on this project"
    return (
        '!!! question "Give feedback"\n\n'
        f"    Comment in the ONNX GenAI working group (meetings and Slack channel, see its\n"
        f"    [charter]({WG_CHARTER})), or {issues} naming the post and the\n"
        "    section you are answering.\n"
    )


def on_page_content(html: str, page, config, files) -> str:
    from generator.site_markup import keep_numbers_whole, wrap_graphs

    return keep_numbers_whole(wrap_graphs(html, page.url.count("/"), _FIGURES))


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
