"""The show layer: plots (pure functions, results in, plotly figures out) and widgets (ipywidgets explorers on
top of them, each with a static twin in ``plots`` so an executed notebook shows its figure without a kernel).
Nothing below this layer imports plotly or ipywidgets."""
