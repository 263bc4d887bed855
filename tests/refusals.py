"""Each security test's refusal, as the user or the caller sees it, collected into
test-output/trust-boundary.md (one row per finding and attack, the latest run's message; the closing
note's table)."""

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "test-output" / "trust-boundary.md"
HEADER = "| finding | attack | refusal |\n|---|---|---|\n"


def note(finding: str, attack: str, message: str) -> None:
    rows: dict[tuple[str, str], str] = {}
    if OUT.is_file():
        for line in OUT.read_text().splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if len(cells) == 3:
                rows[(cells[0], cells[1])] = cells[2]
    rows[(finding, " ".join(attack.split()).replace("|", "/"))] = " ".join(message.split())[:600].replace("|", "/")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(HEADER + "".join(f"| {f} | {a} | {m} |\n" for (f, a), m in sorted(rows.items())))
