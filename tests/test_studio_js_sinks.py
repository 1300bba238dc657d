"""The studio's own JavaScript builds the DOM from text only: no HTML sink outside a short reviewed allow-list.

API data (filenames, prompts, params, transcripts, error messages) reaches the page; an HTML sink would turn any of
it into markup. tests/test_studio_browser.py::test_hostile_text_is_shown_literally checks the result in a browser.
"""

from __future__ import annotations

import re
from pathlib import Path

from api.routes.studio import STATIC_DIR

JS_DIR = STATIC_DIR / "js"
# Property writes and calls that parse a string as HTML (or run it as script).
SINKS = re.compile(
    r"\.(innerHTML|outerHTML|srcdoc)\b|\b(insertAdjacentHTML|createContextualFragment|setHTMLUnsafe|parseHTMLUnsafe)\b"
    r"|\bdocument\s*\.\s*(write|writeln)\b|\bDOMParser\b|\beval\s*\(|\bnew\s+Function\b"
)
# Each entry reviewed: (file, the exact line). Keep it short; a new entry needs a reason in its comment.
ALLOWED = {
    # A comment saying why the helpers never use innerHTML, not a use.
    ("dom.js", "// Tiny DOM helpers: elements are built with textContent only (never innerHTML), so API data cannot "
     "inject markup."),
}  # fmt: skip


def sink_uses(folder: Path) -> list[tuple[str, str]]:
    return [
        (path.name, line.strip())
        for path in sorted(folder.glob("*.js"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if SINKS.search(line)
    ]


def test_the_studio_js_uses_no_html_sink_outside_the_allow_list() -> None:
    files = sorted(path.name for path in JS_DIR.glob("*.js"))
    assert "app.js" in files and "results.js" in files  # the scan looks where the code is
    unreviewed = [use for use in sink_uses(JS_DIR) if use not in ALLOWED]
    assert unreviewed == [], unreviewed


def test_the_scan_finds_each_sink(tmp_path: Path) -> None:
    planted = [
        "cell.innerHTML = job.input.filename;",
        "row.outerHTML = `<tr>${name}</tr>`;",
        'list.insertAdjacentHTML("beforeend", text);',
        "document.write(prompt);",
        "frame.srcdoc = doc;",
        "const f = range.createContextualFragment(html);",
        "new DOMParser().parseFromString(s, 'text/html');",
    ]
    (tmp_path / "planted.js").write_text("\n".join(planted) + "\nnode.textContent = safe;\n")
    assert [line for _, line in sink_uses(tmp_path)] == planted
