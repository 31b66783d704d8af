"""Model-poisoning attacks, one per file (registry: `sim.attacks.model_poisoning.MODEL_POISONING`)."""
