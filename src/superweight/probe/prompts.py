"""The prompts detection scans and probes with when the user gives none (plain strings, no torch)."""
from __future__ import annotations

# Six short everyday sentences (about 70 tokens): enough to tell a weight that wrecks the
# model (KL ~4 nats on SmolLM2) from the strongest ordinary spike (~1 nat), cheap to run.
DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."  # the paper's prompt: what detect scans by default
PROBE_SENTENCES: tuple[str, ...] = (
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door and walked slowly into the dark room.",
    "The quick brown fox jumps over the lazy dog.",
    "Summer is hot. Winter is cold.",
    "He bought three apples, two oranges and a loaf of bread.",
    "Machine learning models are trained on large amounts of data.",
)
