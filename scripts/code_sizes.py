"""Module and function sizes of alignment/ and flows/ in lines, largest first (STYLE: a module around
400 lines at most, a function around 60).

    python scripts/code_sizes.py [ROOT]
"""

import ast
import sys
from pathlib import Path


def main(root: Path) -> None:
    modules, functions = [], []
    for path in sorted([*(root / "alignment").rglob("*.py"), *(root / "flows").rglob("*.py")]):
        text = path.read_text()
        name = str(path.relative_to(root))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    modules.sort(reverse=True)
    functions.sort(reverse=True)
    print(f"modules: {len(modules)}, {sum(n for n, _ in modules)} lines; over 400: {[m for m in modules if m[0] > 400]}")
    print("largest modules:", modules[:6])
    print(f"functions: {len(functions)}; over 60 lines: {[f for f in functions if f[0] > 60]}")
    print("largest functions:", functions[:8])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
