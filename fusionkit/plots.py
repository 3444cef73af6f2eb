"""Pure plotting functions: results in, ``plotly.graph_objects.Figure`` out (no model code, no state).

Widgets (:mod:`fusionkit.widgets`) wrap these same figures in ``FigureWidget``s, so an executed notebook's
static figure and its live explorer always draw the same thing.
"""
from __future__ import annotations

import plotly.graph_objects as go


def expert_task_heatmap(zoo_dict: dict, split: str = "test", relative: bool = False) -> go.Figure:
    """Expert x task matrix from ``Zoo.to_dict()``; ``relative`` shows the gain over the task's chance level."""
    tasks = list(zoo_dict["tasks"])
    experts = [e["name"] for e in zoo_dict["experts"]]
    z, text = [], []
    for e in zoo_dict["experts"]:
        row = [e["scores"][t][split] - (zoo_dict["tasks"][t]["chance"] if relative else 0) for t in tasks]
        z.append(row)
        text.append([f"{v:+.2f}" if relative else f"{v:.2f}" for v in row])
    fig = go.Figure(go.Heatmap(z=z, x=tasks, y=experts, text=text, texttemplate="%{text}",
                               colorscale="RdBu" if relative else "Viridis", zmid=0 if relative else None,
                               colorbar=dict(title="gain over chance" if relative else split)))
    fig.update_layout(title=f"zoo {zoo_dict['zoo']} ({zoo_dict['profile']}): {split} accuracy"
                            + (" minus chance" if relative else ""),
                      xaxis_title="evaluated on task", yaxis_title="expert", yaxis_autorange="reversed",
                      height=120 + 40 * len(experts), width=200 + 110 * len(tasks))
    return fig


def label_balance(task, split: str = "train") -> go.Figure:
    """Bar chart of the number of examples per label in one split of a task."""
    counts = task.label_counts(split)
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values())))
    fig.update_layout(title=f"{task.name}: labels in {split} ({sum(counts.values())} examples)",
                      xaxis_title="label", yaxis_title="examples", height=320)
    return fig
