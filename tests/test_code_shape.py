"""The source stays small enough to read: file and function sizes, no import cycles.

`python tests/test_code_shape.py` prints the figures (lines, files, import layers, longest function, cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
MAX_SRC_LINES = 7000  # the limit; a ratchet: lower it as code goes


def modules() -> dict[str, Path]:
    """Module name -> file, for every module under src/."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, level: int, module: str, is_package: bool) -> str:
    if not level:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - level + 1]
    return ".".join(base + ([name] if name else []))


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the sciqa modules it imports anywhere (function-level imports count)."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(node.module or "", node.level, mod, path.name == "__init__.py")
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod and name.startswith("sciqa"):
                    deps.add(name)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle to break."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def layers(graph: dict[str, set[str]]) -> int:
    """The longest import chain, counted in modules (package __init__ re-exports excluded)."""
    depth: dict[str, int] = {}

    def walk(node: str, seen: frozenset[str]) -> int:
        if node not in depth:
            deps = [d for d in graph[node] if d not in seen]
            depth[node] = 1 + max((walk(d, seen | {d}) for d in deps), default=0)
        return depth[node]

    return max(walk(m, frozenset({m})) for m in graph)


def functions(mods: dict[str, Path]) -> list[tuple[int, str]]:
    """(lines, "module:function") for every function and method."""
    sizes = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                sizes.append((node.end_lineno - start + 1, f"{mod}:{node.name}"))
    return sorted(sizes, reverse=True)


def test_no_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long


def test_src_total_stays_under_the_budget():
    assert sum(len(p.read_text().splitlines()) for p in modules().values()) <= MAX_SRC_LINES


def test_no_function_over_the_limit():
    assert [f for f in functions(modules()) if f[0] > MAX_FUNCTION_LINES] == []


def test_no_import_cycle():
    assert cycles(imports(modules())) == []


def test_the_checks_can_fail():
    """The cycle finder and the sizer see what they must (a check that cannot fail is no check)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layers({"a": {"b"}, "b": {"c"}, "c": set()}) == 3
    assert any(name.endswith(":_resolve") for _, name in functions({"x": Path(__file__)}))


if __name__ == "__main__":
    mods = modules()
    graph = imports(mods)
    total = sum(len(p.read_text().splitlines()) for p in mods.values())
    biggest = max((len(p.read_text().splitlines()), m) for m, p in mods.items())
    print(f"lines {total} · files {len(mods)} · largest file {biggest[1]} {biggest[0]}")
    print(f"import layers {layers(graph)} · cycles {cycles(graph)}")
    sizes = functions(mods)
    print(f"longest function {sizes[0][1]} {sizes[0][0]} · over {MAX_FUNCTION_LINES}: {sum(n > MAX_FUNCTION_LINES for n, _ in sizes)}")
    for n, name in sizes[:25]:
        print(f"  {n:4d} {name}")
