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



def test_an_interval_excludes_zero_only_when_the_half_width_is_smaller_than_the_mean():
    # By hand: [1, 1.2, 1.4] has mean 1.2, sample deviation 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.50.
    assert findings_checks.excludes_zero([1.0, 1.2, 1.4])
    # [0.2, 1.2, 2.2]: mean 1.2, deviation 1.0, half-width 2.48 > 1.2.
    assert not findings_checks.excludes_zero([0.2, 1.2, 2.2])
    assert not findings_checks.excludes_zero([5.0])  # one seed: no interval, nothing excluded


def test_kept_malicious_uploads_are_counted_from_the_id_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "round,backdoor_accuracy,malicious_selected,malicious_ids,kept\n"
        "0,1.0,2,3 7,1 2 3 4\n"        # 3 kept, 7 dropped
        "1,1.0,0,,1 2 3\n"
        "2,1.0,1,9,1 2 3\n"            # 9 dropped
        "3,1.0,2,3 9,3 9 11\n")        # both kept
    by_round = findings_checks.malicious_kept_by_round(tmp_path)
    assert by_round == {0: (2, 1), 1: (0, 0), 2: (1, 0), 3: (2, 2)}
    assert findings_checks.kept_text(by_round) == (
        "kept 3 of 5 malicious uploads (1 a round: 0 of 1 (1 rounds); 2 a round: 3 of 4 (2 rounds))")
    assert findings_checks.kept_text(by_round, range(1, 3)).startswith("kept 0 of 1 ")


def test_a_results_table_must_be_one_of_its_source_files(tmp_path):
    source = "caption\n\n| a | n |\n| --- | ---: |\n| x | 5 |\n"
    document = ("| hand summary |\n| --- |\n\ntext\n\n| a | n |\n| --- | ---: |\n| x | 5 |\n\n"
                "| a | n |\n| --- | ---: |\n| x | 1 |\n")
    # The first table is the document's own summary; the second is the source's; the third is not.
    assert findings_checks.foreign_tables(document, [source]) == ["| a | n |"]
    assert findings_checks.foreign_tables(document.rsplit("\n\n", 1)[0], [source]) == []


def test_the_alpha_frontier_readme_shows_the_five_seed_tables():
    assert findings_checks.check_frontier_tables() == 0
