"""The Markdown the steps write, rendered for a browser: a model card as a person reads it."""

from __future__ import annotations

from components.common.htmldoc import markdown_html, page

CARD = """# Model card: pet-classifier

## Training data
- Dataset version: `ab<12>` (the manifest hash)
- Hyperparameters: lr 0.003, batch size 32, weight decay
  0.0001, best epoch 7

Accuracy **0.9772**, see [the run](http://kfp/run/7).

| class | precision |
|---|---|
| cats | 0.98 |
| a \\| b | 1 |

```
<script>raw</script>
```
"""


def test_a_model_card_becomes_headings_lists_tables_and_escaped_text():
    body = markdown_html(CARD, shift=1)
    assert "<h2>Model card: pet-classifier</h2>" in body and "<h3>Training data</h3>" in body
    assert "<li>Dataset version: <code>ab&lt;12&gt;</code> (the manifest hash)</li>" in body
    assert "<li>Hyperparameters: lr 0.003, batch size 32, weight decay 0.0001, best epoch 7</li>" \
        in body  # a continuation line stays in its item
    assert "<strong>0.9772</strong>" in body and '<a href="http://kfp/run/7">the run</a>' in body
    assert "<tr><td>cats</td><td>0.98</td></tr>" in body and "<td>a | b</td>" in body
    assert "&lt;script&gt;raw&lt;/script&gt;" in body and "<script>" not in body
    assert "#" not in body and "|---|" not in body


def test_a_page_has_a_title_and_a_style():
    html = page("Dataset <v1>", "<p>x</p>")
    assert html.startswith("<!doctype html>") and "<title>Dataset &lt;v1&gt;</title>" in html
