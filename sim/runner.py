"""One simulated federated run: the round loop.

Each round is select -> train the selected clients (engine) -> uploads (client-level DP, model
poisoning) -> aggregate -> update the global model -> evaluate -> record. After every round the
run folder is brought up to date (`sim.io` lists its files): `metrics.csv` gains the round's
`RoundRecord`, the checkpoint is replaced (`sim.state`), and after the last round `summary.json`
and `accuracy.png` are written (`sim.reporting`). `run(..., resume=True)` continues after the
last finished round (`sim.resume`). With `metrics.attack_effect` every round ends with a step of
the shadow run (`sim.attack_effect`), whose state the checkpoint saves too.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from sim.attack_effect import ShadowRun, backdoor_gradient
from sim.attacks.data.registry import trigger_pieces
from sim.attacks.data_poisoning import stamp_trigger, trigger_values
from sim.config import Config, to_dict, validate
from sim.data import check_data_files, hold_out, load_dataset, partition
from sim.defenses.client import client_defense_class
from sim.engines import distributed
from sim.engines.client_training import SERVER
from sim.engines.registry import build_engine, describe_engine, resolve_engine
from sim.errors import ConfigError
from sim.io import (ATTACK_EFFECT_PLOT_FILE, CHECKPOINT_FILE, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, PLOT_FILE,
                    SUMMARY_FILE, check_names, lock_folder, write_atomic)
from sim.lazy import np, torch
from sim.metrics import Scorer, TestSet, is_scored_round
from sim.models import AUTO_MEMORY_FORMAT, build_model, flatten_parameters, memory_format_name, trainable_parameters
from sim.reporting import (RoundRecord, ids_text, metrics_csv_text, progress_postfix, read_finished, summarize,
                           write_outputs)
from sim.manifest import write_manifest
from sim.provenance import checked, observe, segment, unrecorded_segment
from sim.resume import load_checkpoint, refuse_overwrite
from sim.selection import Selector
from sim.server.base import aggregation_context
from sim.server.registry import build_aggregator
from sim.state import restore_parts, save_checkpoint
from sim.upload_stats import upload_statistics
from sim.uploads import UploadPipeline


def _check_device(device: str) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but this machine has no usable CUDA GPU; fix: --set device=cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible; fix: --set device=cuda:0"
            )
    return torch.device(device)


def _seed_everything(seed: int, round_index: int) -> None:
    # Every round starts from RNG states that depend only on (seed, round), so a resumed run draws
    # what the uninterrupted run drew, whatever a part did with the global generators before.
    round_seed = (seed * 1_000_003 + round_index) % (2**63)
    torch.manual_seed(round_seed)
    np.random.seed(round_seed % (2**32))
    random.seed(round_seed)


class _Parts:
    """Dataset, selector, engine, aggregator and evaluation model of one run."""

    def __init__(self, cfg: Config, device: torch.device):
        self.dataset = load_dataset(
            cfg.data.dataset,
            cfg.data.data_dir,
            device,
            seed=cfg.seed,
            synthetic_train_size=cfg.data.synthetic_train_size,
            synthetic_test_size=cfg.data.synthetic_test_size,
        )
        self.aggregator = build_aggregator(
            cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients, cfg.clients.num_malicious
        )
        # A rule that compares with an update of the server's own (FLTrust) gets a root set, held out
        # of every client's data; the engine trains it as one more "client" (id num_clients).
        labels, held, rest = self.dataset.train_y, None, None
        if "reference_update" in self.aggregator.needs:
            held, rest = hold_out(int(labels.shape[0]), self.aggregator.root_size, cfg.seed)
            held, rest = held.to(labels.device), rest.to(labels.device)
            labels = labels[rest]
        self.partitions = partition(
            labels,
            cfg.clients.num_clients,
            cfg.data.partition,
            cfg.seed,
            dirichlet_beta=cfg.data.dirichlet_beta,
            shards_per_client=cfg.data.shards_per_client,
        )
        self.server_client = None
        if held is not None:
            self.partitions = [rest[part] for part in self.partitions] + [held]
            self.server_client = cfg.clients.num_clients
        self.selector = Selector.from_config(cfg)
        self.malicious = list(self.selector.malicious)
        self.model = build_model(
            cfg.model, self.dataset.image_shape, self.dataset.num_classes, seed=cfg.seed
        ).to(device)
        self.initial_params = flatten_parameters(self.model)
        self.engine = build_engine(cfg, self.dataset, self.partitions, self.malicious)
        self.uploads = UploadPipeline(cfg, self.malicious, self.initial_params.numel())
        # Kept (and checkpointed) when the aggregator or the data-poisoning attack reads it.
        self.engine_reads_update = bool(getattr(self.engine, "needs_last_global_update", False))
        self.uploads.keep_global_update = "last_global_update" in self.aggregator.needs or self.engine_reads_update
        test_size = cfg.eval.test_size
        test_x = self.dataset.test_x[:test_size] if test_size else self.dataset.test_x
        test_y = self.dataset.test_y[:test_size] if test_size else self.dataset.test_y
        hi, lo = trigger_values(self.dataset, cfg.attack.trigger_values)
        self.stamp = lambda images: stamp_trigger(images, hi, lo)
        # Parts of the trigger the attack is also scored by (DBA's pieces), each alone.
        self.piece_stamps = [lambda images, pixels=pixels: stamp_trigger(images, hi, lo, pixels)
                             for pixels in trigger_pieces(cfg.attack)]
        # The batches are cut and stamped once per run; every scoring reuses them.
        self.scorer = Scorer(self.model, TestSet(test_x, test_y, target_label=cfg.attack.target_label,
                                                 stamp=self.stamp, batch_size=cfg.eval.batch_size,
                                                 piece_stamps=self.piece_stamps))
        self.shadow = None
        if cfg.metrics.attack_effect:
            self.shadow = ShadowRun(
                self.engine,
                self.uploads,
                build_aggregator(cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients,
                                 cfg.clients.num_malicious),
                self.initial_params,
                [param.numel() for _, param in trainable_parameters(self.model)],
                score=lambda params: self.scores(cfg, params),
                reseed=lambda round_index: _seed_everything(cfg.seed, round_index),
                counters=self.engine.batchnorm_counters,
                seed=cfg.seed,
                reference=self.reference_update if self.server_client is not None else None,
                gradient=self._backdoor_gradient(),
                kept=cfg.metrics.shadow_kept,
            )

    def _backdoor_gradient(self):
        """The backdoor task's gradient for `attack_effect_backdoor` (docs/algorithms.md §6): on the
        first triggered scoring batch (the first `eval.batch_size` non-target test images, stamped),
        on a copy of the model; None without a triggered image."""
        test_set = self.scorer.test_set
        if not test_set.triggered:
            return None
        return backdoor_gradient(copy.deepcopy(self.model), test_set.triggered[0], test_set.target_label)

    def scores(self, cfg: Config, params: torch.Tensor) -> dict[str, Any]:
        """Main accuracy, backdoor accuracy and test loss of the flat parameters `params`."""
        return self.scorer(params)

    def aggregation_context(self, cfg: Config, round_index: int, selected: list[int], global_params: torch.Tensor):
        """What the aggregator declares it needs in this round (`sim.server.base.aggregation_context`)."""
        return aggregation_context(self.aggregator, round=round_index, clients=selected, seed=cfg.seed,
                                   counters=lambda clients: self.engine.batchnorm_counters(clients),
                                   global_params=global_params,
                                   last_global_update=self.uploads.last_global_update,
                                   reference_update=self.reference_update if self.server_client is not None else None)

    def reference_update(self, round_index: int, global_params: torch.Tensor) -> torch.Tensor:
        """The server's own update in round `round_index`: its root set trained from `global_params`
        by the run's engine like a client's data, with no client defense and no attack."""
        return self.engine.train_clients(global_params, [self.server_client], round_index, roles=[SERVER])[0]

    def stateful(self) -> dict[str, Any]:
        """The parts a checkpoint saves, by checkpoint key."""
        parts = {"aggregator_state": self.aggregator, "engine_state": self.engine, "upload_state": self.uploads}
        if self.shadow is not None:
            parts["shadow_state"] = self.shadow
        return parts


def run(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    label: str | None = None,
    allow_machine_change: bool = False,
) -> dict[str, Any]:
    """Run (or, with `resume`, continue) the experiment `cfg` in `out_dir`; returns the summary.

    Same config and seed give the same `metrics.csv` on CPU, apart from the wall-time column, on the
    same machine facts (`sim.provenance.CHECKED_FACTS`: torch version, threads, CPU/GPU model); a
    resume on other ones is refused unless `allow_machine_change`. The folder is locked while this
    runs (`sim.io.FolderLock`); a finished run (its manifest intact, `sim.manifest`) is read back,
    never rewritten.
    """
    validate(cfg)
    client_defense_class(cfg.client_defense).check_available()  # e.g. the compiled extension, before any data
    check_data_files(cfg.data.dataset, cfg.data.data_dir)  # before the run folder is made
    # Under torchrun: join the process group; this rank's device (cuda -> its LOCAL_RANK's GPU).
    device = distributed.init_from_env(_check_device(cfg.device))
    writer = distributed.is_main_process()  # only rank 0 writes files and prints
    out_dir = Path(out_dir)
    check_names(out_dir)
    if writer and resume and not out_dir.is_dir():
        load_checkpoint(out_dir, cfg)  # refuses with the reason, before anything is made
    # One writer per folder, held until this function returns (or the process ends).
    lock = lock_folder(out_dir, "run") if writer else None
    try:
        return _run_locked(cfg, out_dir, resume, progress, label, allow_machine_change, device, writer)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: Config, out_dir: Path, resume: bool, progress: bool, label: str | None,
                allow_machine_change: bool, device: torch.device, writer: bool) -> dict[str, Any]:
    facts = observe(device)
    machine = checked(facts)
    checkpoint = None
    if resume:
        checkpoint = distributed.broadcast_object(
            load_checkpoint(out_dir, cfg, machine, allow_machine_change) if writer else None
        )
        finished = distributed.broadcast_object(
            read_finished(out_dir, cfg) if writer and checkpoint["next_round"] == cfg.rounds else None
        )
        if finished is not None:  # read back as it is: a finished run's files are never rewritten
            return finished
    elif writer:
        refuse_overwrite(out_dir)

    _seed_everything(cfg.seed, 0)
    parts = _Parts(cfg if str(device) == cfg.device else dataclasses.replace(cfg, device=str(device)), device)
    engine_description = describe_engine(cfg)
    if writer and (cfg.engine == "auto" or distributed.is_active()):
        reason = resolve_engine(cfg)[1]
        choice = f"auto -> {engine_description} ({reason})" if cfg.engine == "auto" else engine_description
        print(f"engine: {choice}", file=sys.stderr, flush=True)
    if writer and cfg.training.memory_format == AUTO_MEMORY_FORMAT:
        engine_name = resolve_engine(cfg)[0]
        layout = memory_format_name(cfg.training, device, engine_name)
        print(f"training.memory_format: auto -> {layout} ({engine_name} engine on {str(device).split(':')[0]})",
              file=sys.stderr, flush=True)

    start_round, rows, global_params = 0, [], parts.initial_params.clone()
    segments: list[dict[str, Any]] = []
    if checkpoint is not None:
        start_round, rows = checkpoint["next_round"], list(checkpoint["rows"])
        segments = list(checkpoint.get("segments") or ([unrecorded_segment(0, start_round)] if start_round else []))
        global_params = checkpoint["global_params"].to(device=device, dtype=parts.initial_params.dtype)
        if global_params.shape != parts.initial_params.shape:
            raise ConfigError(
                f"{out_dir / CHECKPOINT_FILE} holds a model of {global_params.numel()} parameters, this run's has "
                f"{parts.initial_params.numel()}; nothing was changed; fix: start the run again in another --out"
            )
        restore_parts(checkpoint, parts.stateful())
        if parts.engine_reads_update:
            parts.engine.observe_global_update(parts.uploads.last_global_update)
    if writer:
        # The manifest goes first: from here on the folder holds no finished run until the end.
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        write_atomic(out_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if start_round < cfg.rounds:
            # A run extended past its old end has no final results until it reaches the new one.
            for name in (SUMMARY_FILE, PLOT_FILE, ATTACK_EFFECT_PLOT_FILE):
                (out_dir / name).unlink(missing_ok=True)

    bar = tqdm(total=cfg.rounds, initial=start_round, desc=label or "rounds", unit="round",
               disable=not progress or not writer, dynamic_ncols=True)
    try:
        for round_index in range(start_round, cfg.rounds):
            global_params, record = _round(cfg, parts, global_params, round_index)
            rows.append(record.as_row())
            if writer:
                # This process's segment of rounds, with the facts it observed when it started.
                this_segment = segment(start_round, round_index + 1, facts)
                # Checkpoint first: metrics.csv never holds a round the checkpoint lacks (sim.resume).
                save_checkpoint(out_dir, config=to_dict(cfg), next_round=round_index + 1, global_params=global_params,
                                parts=parts.stateful(), rows=rows, machine=machine,
                                segments=segments + [this_segment])
                write_atomic(out_dir / METRICS_FILE, metrics_csv_text(rows))
            bar.set_postfix(progress_postfix(rows[-1]), refresh=False)
            bar.update(1)
    finally:
        bar.close()
    if start_round < cfg.rounds:
        segments = segments + [segment(start_round, cfg.rounds, facts)]

    if not writer:
        return summarize(rows, cfg, engine_description)
    write_atomic(out_dir / METRICS_FILE, metrics_csv_text(rows))
    summary = write_outputs(out_dir, rows, cfg, label, engine=engine_description, segments=segments)
    write_manifest(out_dir, len(rows))  # last: the run is finished once its files are sealed
    return summary


def _round(cfg: Config, parts: _Parts, global_params: torch.Tensor, round_index: int) -> tuple[torch.Tensor, RoundRecord]:
    """One round: select -> train -> uploads -> aggregate -> evaluate; the new global model and its record."""
    started = time.perf_counter()
    _seed_everything(cfg.seed, round_index)
    selected = parts.selector.select(round_index)
    updates = parts.engine.train_clients(global_params, selected, round_index)
    updates = parts.uploads(updates, selected, round_index, global_params)  # DP, model poisoning
    malicious = set(parts.malicious)
    placement = upload_statistics(updates, [c in malicious for c in selected]) if cfg.metrics.upload_stats else {}
    aggregation = parts.aggregator(updates, parts.aggregation_context(cfg, round_index, selected, global_params))
    update = aggregation.update.to(device=global_params.device, dtype=global_params.dtype)
    candidate = global_params + update
    # An unscored round (eval.every) checks the parameters alone: a finite model whose test loss
    # is not finite is rejected only in a scored round.
    scored = is_scored_round(round_index, cfg.rounds, cfg.eval.every)
    finite = bool(torch.isfinite(candidate).all())
    scores = parts.scores(cfg, candidate) if finite and scored else None
    rejected = not finite or (scored and not math.isfinite(scores["test_loss"]))
    if rejected:
        # The server keeps the previous model rather than one it cannot use (docs/architecture.md,
        # "A bad aggregate").
        if distributed.is_main_process():
            print(f"warning: round {round_index}: the aggregate gives a non-finite global model "
                  f"(|update| max {float(aggregation.update.abs().max()):.3g}); it is rejected and the previous "
                  "model kept (metrics.csv: aggregate_rejected=1)", file=sys.stderr, flush=True)
        update = torch.zeros_like(update)
        scores = parts.scores(cfg, global_params) if scored else None
    else:
        global_params = candidate
    parts.uploads.observe(update)
    if parts.engine_reads_update:
        parts.engine.observe_global_update(parts.uploads.last_global_update)
    # The shadow step comes after everything of the run's own round, so it changes nothing of it.
    effect = {} if parts.shadow is None else parts.shadow.step(global_params, selected, round_index, scored=scored,
                                                                   run_kept=aggregation.order)
    malicious_in_round = [c for c in selected if c in malicious]
    scores = scores or {"main_accuracy": None, "backdoor_accuracy": None, "test_loss": None,  # an unscored round
                        "backdoor_accuracy_pieces": []}
    return global_params, RoundRecord(
        round=round_index,
        main_accuracy=_float_or_none(scores["main_accuracy"]),
        backdoor_accuracy=_float_or_none(scores["backdoor_accuracy"]),
        test_loss=_float_or_none(scores["test_loss"]),
        malicious_selected=len(malicious_in_round),
        selected=ids_text(selected),
        malicious_ids=ids_text(malicious_in_round),
        kept=ids_text([selected[i] for i in aggregation.kept]),
        rejected_nonfinite=ids_text([selected[i] for i in aggregation.rejected_nonfinite]),
        aggregate_rejected=int(rejected),
        backdoor_accuracy_pieces=" ".join(repr(float(rate)) if rate is not None else "-"
                                          for rate in scores["backdoor_accuracy_pieces"]),
        backdoor_margin=_float_or_none(scores.get("backdoor_margin")),
        wall_time_s=round(time.perf_counter() - started, 4),
        **effect,
        **placement,
    )


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)
