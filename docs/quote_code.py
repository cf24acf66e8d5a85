"""Keep the post's quoted code equal to the project's: fills each block that follows a `quote` marker.

A marker `<!-- quote: modeling_vanilla.py::VanillaAttention -->` on the line before a ```python block makes that
block (```python, or ```python continuation) the current source of the named top-level function or class.

    python docs/quote_code.py           # rewrite the post in place
    python docs/quote_code.py --check   # exit 1 if any quoted block is stale
"""

import argparse
import ast
import re
import sys
from pathlib import Path

from vanilla_files import write_text_atomically

ROOT = Path(__file__).resolve().parent.parent
POST = ROOT / "docs" / "transformer-networks.md"
MARKER = re.compile(
    r"(?P<head><!-- quote: (?P<file>[\w./]+)::(?P<name>\w+) -->\n```python[ \w]*\n)(?P<code>.*?)^```$",
    re.DOTALL | re.MULTILINE,
)


def source_of(file: str, name: str) -> str:
    """The source text of a top-level function or class, decorators included."""
    text = (ROOT / file).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "\n".join(text.splitlines()[first - 1 : node.end_lineno])
    raise LookupError(f"{file} has no top-level function or class named {name}")


def render(post: str) -> str:
    """The post with every quoted block replaced by the current source."""
    return MARKER.sub(lambda m: m["head"] + source_of(m["file"], m["name"]) + "\n```", post)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale quotes instead of rewriting")
    args = parser.parse_args()
    post = POST.read_text()
    fresh = render(post)
    if args.check:
        if fresh != post:
            print(f"{POST.name}: quoted code is stale; run python docs/quote_code.py", file=sys.stderr)
            return 1
        return 0
    if fresh != post:
        write_text_atomically(POST, fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
