"""Client attacks: data poisoning during local training, model poisoning of the uploads."""
