"""scripts/findings_checks.py: paired differences seed by seed, and quoted R = +q shares held to
the measured file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "findings_checks.py"
spec = importlib.util.spec_from_file_location("findings_checks", SCRIPT)
findings_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings_checks)


def test_paired_differences_are_taken_seed_by_seed_over_common_seeds():
    comparison = {"variants": {
        "a": {"runs": {"0": {"summary": {"m": 10.0}}, "1": {"summary": {"m": 14.0}}, "2": {"summary": {"m": 9.0}}}},
        "b": {"runs": {"0": {"summary": {"m": 8.0}}, "1": {"summary": {"m": 10.0}}, "3": {"summary": {"m": 1.0}}}},
    }}
    differences, text = findings_checks.paired(findings_checks.per_seed(comparison, "a", "m"),
                                                findings_checks.per_seed(comparison, "b", "m"))
    assert differences == {0: 2.0, 1: 4.0}
    # By hand: mean 3, sample deviation sqrt(2), t_{0.975, 1} = 12.706: half-width 12.706 * sqrt(2) / sqrt(2).
    assert text == "+3.0 ± 12.7 (n 2)"


def test_a_single_seed_gives_no_interval():
    assert findings_checks.estimate_text([-7.25]) == "-7.2 (one seed, no interval)"


def test_a_share_quote_must_be_a_measured_share_at_its_own_precision():
    text = ("Intro.\n\nR sits at +q on 99.808-99.999% of element-steps.\n\n"
            "- one item: R = +q on 99.7% of element-steps\n- another: 99.5% main accuracy\n")
    quotes = findings_checks.quoted_shares(text)
    assert quotes == ["99.808", "99.999", "99.7"]  # the list item without "+q" is not a share quote
    assert findings_checks.share_disagreements(quotes, [99.808, 99.999, 99.978]) == ["99.7"]
    assert findings_checks.share_disagreements(["99.8", "99.98"], [99.808, 99.978]) == []


def test_the_share_table_is_read_from_the_output_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("| model | R = +q (% of element-steps) | largest abs(g~ - g) |\n| --- | ---: | ---: |\n"
                      "| seeded initialisation | 99.978 | 1.49 |\n| run/checkpoint.pt | 99.808 | 4.67 |\n")
    assert findings_checks.measured_shares(readme) == {"seeded initialisation": 99.978, "run/checkpoint.pt": 99.808}


def test_committed_documents_quote_only_measured_shares():
    assert findings_checks.check_r_share() == 0

