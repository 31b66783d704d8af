"""Pins the simulator's behaviour across a refactor: a grid of settings (data-poisoning attacks x
engines, with the client defenses, model poisoning, counters and the attack effect that read the
attack), two rounds at a tiny scale each; per round the metrics (wall time left out) and the sha256
of the global model, as JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python scripts/pin_behaviour.py OUT.json
    python scripts/pin_behaviour.py --diff BEFORE.json AFTER.json

(PYTHONPATH picks the checkout: run as a script, `import sim` does not look in the working
folder.) The diff holds every column BEFORE has; columns added since are listed, not compared.

Settings are given as nested YAML mappings with the names of the code under test's day; a moved
name is read under its new one (`sim.config.migrate_settings`), so one grid runs on both sides.
"""

from __future__ import annotations

import hashlib
import json
import sys

TINY = {
    "rounds": 2,
    "data": {"dataset": "synthetic", "synthetic_train_size": 240, "synthetic_test_size": 60},
    "model": "mlp",
    "clients": {"num_clients": 8, "num_malicious": 3, "clients_per_round": 5},
    "selection": {"schedule": "fixed", "fixed_malicious": 2},
    "training": {"local_steps": 3, "batch_size": 8},
    "eval": {"batch_size": 30},
    "server": {"f": 1},
}

ATTACKS = {
    "none": {"attack": {"type": "none"}},
    "backdoor-mgda": {"attack": {"type": "backdoor", "blend": "mgda"}},
    "backdoor-fixed": {"attack": {"type": "backdoor", "blend": "fixed", "blend_weight": 0.3}},
    "backdoor-boost": {"attack": {"type": "backdoor", "boost": 3.0, "target_label": 2}},
    "backdoor-authors-trigger": {"attack": {"type": "backdoor", "trigger_values": "authors"}},
    "label_flip": {"attack": {"type": "label_flip"}},
    "label_flip-boost": {"attack": {"type": "label_flip", "boost": 2.0}},
}
CONTEXTS = {
    "plain": {"server": {"aggregator": "fedavg"}},
    "leadfl-hessian": {"client_defense": {"type": "leadfl"}, "server": {"aggregator": "multikrum"}},
    "leadfl-original": {"client_defense": {"type": "leadfl", "variant": "original", "momentum_reset": "never"}},
    "ldp": {"client_defense": {"type": "ldp"}, "server": {"aggregator": "median"}},
    "flwbc": {"client_defense": {"type": "flwbc"}},
    "fltk-counters": {"model": "fmnist_cnn", "server": {"aggregator": "fltk_multikrum"}},
    "attack-effect": {"metrics": {"attack_effect": True}, "server": {"aggregator": "fedavg"}},
    "attack-dpfl": {"privacy": {"type": "gaussian"}, "model_poisoning": {"type": "attack_dpfl"}},
    "lie": {"model_poisoning": {"type": "lie"}},
}
ENGINES = ("sequential", "batched")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def grid() -> dict[str, dict]:
    cases = {}
    for attack, attack_settings in ATTACKS.items():
        for context, context_settings in CONTEXTS.items():
            if context in ("attack-dpfl",) and attack == "none":
                continue  # refused: it uploads the malicious clients' own poisoned update
            for engine in ENGINES:
                settings = _merge(_merge(_merge(TINY, attack_settings), context_settings), {"engine": engine})
                if settings.get("model") == "fmnist_cnn":
                    settings["data"] = dict(settings["data"], synthetic_train_size=120, synthetic_test_size=40)
                cases[f"{attack}/{context}/{engine}"] = settings
    return cases


def run_case(settings: dict) -> list[dict]:
    import torch

    from sim import runner
    from sim.config import config_from_dict

    cfg = config_from_dict(settings)
    parts = runner._Parts(cfg, torch.device("cpu"))
    params = parts.initial_params.clone()
    rows = []
    for round_index in range(cfg.rounds):
        params, record = runner._round(cfg, parts, params, round_index)
        row = record.as_row()
        row.pop("wall_time_s")
        row["model_sha256"] = hashlib.sha256(params.detach().cpu().numpy().tobytes()).hexdigest()
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    if argv[:1] == ["--diff"]:
        before, after = (json.load(open(path)) for path in argv[1:3])

        def kept(rows, like):
            return [{key: row.get(key) for key in old} for row, old in zip(rows, like)]

        differ = sorted(name for name in before
                        if name not in after or len(after[name]) != len(before[name])
                        or kept(after[name], before[name]) != before[name])
        missing = sorted(set(before) - set(after))
        added = sorted({key for rows in after.values() for row in rows for key in row}
                       - {key for rows in before.values() for row in rows for key in row})
        print(f"{len(before)} cases before, {len(after)} after; {len(differ)} differ; {len(missing)} missing; "
              f"columns added (not compared): {', '.join(added) or 'none'}")
        for name in differ:
            print("  differs:", name)
        return 1 if differ else 0
    import torch

    torch.set_num_threads(1)
    results = {}
    for name, settings in grid().items():
        results[name] = run_case(settings)
        print(name, results[name][-1]["main_accuracy"], results[name][-1]["backdoor_accuracy"], file=sys.stderr)
    with open(argv[0], "w") as out:
        json.dump(results, out, indent=1, sort_keys=True)
    print(f"{len(results)} cases written to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
