"""DBA, the distributed backdoor attack (Xie et al., ICLR 2020; docs/algorithms.md §2.3).

The global trigger (the 9-pixel pattern) is split into `pieces` local triggers
(`sim.attacks.data_poisoning.split_trigger`); the malicious clients, in increasing id order, take
piece 0, 1, ..., pieces-1, 0, ... Each trains as the backdoor does (MGDA or a fixed blend of its
clean batch and the batch stamped with its own piece, relabelled to the target), so no single
client ever sees the global trigger. The run is scored with the global trigger
(`backdoor_accuracy`) and with each piece alone (`backdoor_accuracy_pieces`, one figure per piece).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.attacks.data.backdoor import Backdoor, BackdoorSettings
from sim.attacks.data_poisoning import TRIGGER_PIXELS, split_trigger, stamp_trigger
from sim.lazy import torch
from sim.settings import setting


@dataclass
class DBASettings(BackdoorSettings):
    pieces: int = setting(3, "int", low=2, high=len(TRIGGER_PIXELS),
                          help="local triggers the global one is split into, one per malicious client in turn")


class DBA(Backdoor):
    """The backdoor with one piece of the trigger per malicious client."""

    name = "dba"
    settings = DBASettings
    description = "distributed backdoor (DBA)"

    def __init__(self, settings, attack, dataset, device, malicious=()):
        super().__init__(settings, attack, dataset, device, malicious)
        self.piece_pixels = split_trigger(int(settings.pieces))
        self.rank = {client: rank for rank, client in enumerate(self.malicious)}

    @classmethod
    def trigger_pieces(cls, settings):
        return split_trigger(int(settings.pieces))

    def piece_of(self, client: int) -> int:
        """The piece client `client` stamps: its rank among the malicious ids (its id when it is not
        one of them, for a role given by hand), modulo the number of pieces."""
        return self.rank.get(int(client), int(client)) % len(self.piece_pixels)

    def start_round(self, clients, roles, plans, steps) -> None:
        self.row_pieces = [self.piece_of(client) for client in clients]

    def poisoned(self, x, y, rows):
        pieces = [self.row_pieces[row] for row in rows]
        poisoned_x = x.clone()
        for piece in sorted(set(pieces)):
            index = torch.tensor([k for k, p in enumerate(pieces) if p == piece], device=x.device)
            chosen = x.index_select(0, index)
            stamped = stamp_trigger(chosen.flatten(0, 1), self.trigger_hi, self.trigger_lo, self.piece_pixels[piece])
            poisoned_x.index_copy_(0, index, stamped.view_as(chosen))
        return poisoned_x, torch.full_like(y, int(self.attack.target_label))
