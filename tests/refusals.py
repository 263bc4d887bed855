"""Each security test's refusal, as the user or the caller sees it, collected into
test-output/trust-boundary.md (the closing note's table; CI keeps test-output/)."""

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "test-output" / "trust-boundary.md"


def note(finding: str, attack: str, message: str) -> None:
    OUT.parent.mkdir(exist_ok=True)
    if not OUT.exists():
        OUT.write_text("| finding | attack | refusal |\n|---|---|---|\n")
    shown = " ".join(message.split())[:600].replace("|", "/")
    with OUT.open("a") as f:
        f.write(f"| {finding} | {attack} | {shown} |\n")
