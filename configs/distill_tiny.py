"""Two rounds of self-distillation of the tiny audio LM on synthetic data, sized for a small CPU.

`python -m cogito_jax.distill --config configs/distill_tiny.py --workdir W`: SFT on 200 seed questions
with reference reasoning, then per round 4 samples (2 choice orders, T = 0.7) on each of 128 synthetic
pool questions, hint retry of all-wrong prompts, selection, fine-tuning from the SFT checkpoint, and
greedy evaluation on 512 held-out questions. The arg `smoke` is a seconds-sized version (nothing is
learnt; it exercises every stage).
"""

from ml_collections import ConfigDict

from configs.tiny import get_config as tiny


def get_config(arg: str | None = None) -> ConfigDict:
    smoke = arg == "smoke"
    c = tiny()
    c.name = "distill_tiny"
    c.data.num_train = 40 if smoke else 200  # seed questions with reference reasoning
    c.data.num_heldout = 16 if smoke else 512
    c.data.max_len = 224
    c.data.vocab_size = 512
    c.train.batch_size = 8
    c.train.log_every = 5
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2 if smoke else 20
    c.optim.weight_decay = 0.01
    c.checkpoint.every = 1000
    c.checkpoint.async_save = False
    c.distill.rounds = 2
    c.distill.sft_steps = 4 if smoke else 200
    c.distill.round_steps = 4 if smoke else 100
    c.distill.synthetic_pool = 16 if smoke else 128  # questions the model answers without the key
    c.distill.num_samples = 4
    c.distill.orders = 2
    c.distill.temperature = 0.7  # a 250k-parameter model at T = 1 mostly writes malformed traces
    c.distill.max_new_tokens = 80  # the longest reference response is 74 tokens
    c.distill.batch_size = 16 if smoke else 64
    c.distill.all_wrong = "hint"
    return c
