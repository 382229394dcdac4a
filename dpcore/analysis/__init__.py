"""The paper's analyses: instability (linear mode connectivity), weight distributions and figures.

``instability`` and ``weights`` are pure PyTorch; ``aggregate`` reads several runs back for reports;
``figures`` draws with matplotlib's Agg canvas (imported only when figures are asked for).
"""
