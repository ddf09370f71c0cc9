"""Probing a model: hooks on the down projections (``hooks``), reversible weight edits
(``interventions``), the one batched pass runner every "what does this edit do" question
goes through (``passes``), and what it measures: probe-sentence KL and perplexity
(``measures``), real-text windows and their baselines (``realtext``)."""
