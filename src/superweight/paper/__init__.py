"""The paper's experiments: ablations and the scale sweep (``ablate``), the stopword shift
(``stopwords``), zero-shot accuracy through lm-evaluation-harness (``zeroshot``), and the
text and task data they read (``data``)."""
