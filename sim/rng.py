"""Every random stream of a run, each a pure function of the seed and the words that name it.

A stream is keyed by `(seed, ..., tag)`; distinct tags keep the streams independent, so adding a
draw to one never shifts another. All tags live here, so none is used twice by accident.
"""

from __future__ import annotations

from sim.lazy import np, torch


# torch streams, keyed by derive_seed(seed, [client,] [round,] tag)
BATCH_ORDER = 0  # (seed, client, round): a client's minibatch order, then its label-flip shifts
DEFENSE_NOISE = 1  # (seed, client, round): the ldp / flwbc noise of a client's local training
PRIVACY_NOISE = 7  # (seed, client, round): the client-level DP noise on a client's upload
MODEL_POISONING = 8  # (seed, round): the model-poisoning attack's draws in a round
POISONEDFL_DIRECTION = 9  # (seed,): PoisonedFL's fixed sign direction
AGGREGATION = 10  # (seed, round): the draws of an aggregation rule that asks for a generator

# numpy streams, keyed by default_rng([seed, ..., tag])
MALICIOUS_SET = 1  # [seed, tag]: which clients are malicious
SELECTION_ROUND = 2  # [seed, round, tag]: the clients selected in a round
ROOT_SET = 3  # [seed, tag]: the server's own training samples (FLTrust's root set), held out of every client


def derive_seed(*words: int) -> int:
    """A 63-bit seed that depends on every word (distinct tuples give unrelated streams)."""
    state = np.random.SeedSequence([int(word) for word in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def torch_stream(*words: int, device="cpu") -> torch.Generator:
    """A torch generator on `device` seeded from `words` (the last one a tag above)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(*words))
    return generator


def noise_generator(seed: int, client: int, round: int, device) -> torch.Generator:
    """The client-defense noise stream of client `client` in round `round`, on `device`."""
    return torch_stream(seed, client, round, DEFENSE_NOISE, device=device)


def numpy_stream(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(word) for word in words])
