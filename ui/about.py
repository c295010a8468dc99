"""⑩ About the method: the idea with its formulas, for teaching, and where the API and CLI are."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

FOOTER = ("<div style='color:#6b7280;font-size:0.85em;margin-top:12px;'>API: this run is also the endpoint "
          "<code>/unlearn</code> — see “Use via API” at the bottom of the page. CLI: <code>python -m mape unlearn "
          "--preset minilm-bbc --forget class:sport --out r.json</code>.</div>")


ABOUT_MD = r"""
### What unlearning asks for
A model $f_\theta$ was trained on $D = D_f \cup D_r$. A request asks it to **forget** $D_f$ (say, for a privacy
request): afterwards it should behave like a model **retrained from scratch on $D_r$ only** (the gold standard),
without paying for that retraining. MAPE-Unlearn (Bao et al., 2025, arXiv 2508.17233) does this by updating only a
small, well-chosen set of Transformer **modules**: attention heads and feed-forward (FFN) filters.

### 1. Masks on heads and filters
Two gate tensors sit inside the trained model $\theta^*$: $m_h \in \mathbb{R}^{L\times H}$ for the $H$ heads and
$m_f \in \mathbb{R}^{L\times F}$ for the $F$ FFN filters of each of the $L$ layers. A head gate multiplies that
head's slice of the input of the attention output projection; a filter gate multiplies that unit's activation
before the FFN down projection. With all gates at 1 the model computes exactly what it computed before.
A head owns its rows of $W_Q, W_K, W_V$ (and biases) and its columns of $W_O$; a filter owns one row of the FFN
up projection and one column of the down projection.

### 2. Mask gradients and scores
With the parameters frozen, one pass over $D_f$ and one over a retain sample give, for every batch $b$, the
gradient $s_b = \nabla_m \ell(b)$ of the batch's summed loss at $m = 1$. From them:

$$G_f = \sum_b s_b^{(f)} \qquad F_r = \frac{1}{N_r}\sum_b \big(s_b^{(r)}\big)^2$$

($G_f$: gradient of the summed forget loss; $F_r$: diagonal empirical Fisher of the gates on the retain sample, in
per-example units). Switching unit $i$ off moves its gate from 1 to 0; a second-order Taylor expansion at $m = 1$
estimates the change of a loss $\mathcal{L}$ as $-\partial_i \mathcal{L} + \tfrac12 F_{ii}$. The objectives score
each unit with that estimate (higher = **selected for update**):

- **auto** (default): **mlr**, or **contrast** when every forget example is a poisoned example of a backdoor;
- **mlr** (minimise retain loss): $\;SC_i = G_{f,i} + \tfrac12 F_{r,i}\;$ — the rise of the retain loss,
  using $\nabla \mathcal{L}(D_r) = -\nabla \mathcal{L}(D_f)$ at the training optimum;
- **mlf** (maximise forget loss): $\;SC_i = -G_{f,i} + \tfrac12 F_{f,i}\;$ with $F_f$ the forget-set Fisher;
- **norm**: the norm of the unit's parameter gradient on the forget loss (fast, less control);
- **contrast**: how much more the unit responds to the forget set than to retained examples,
  $(\bar a_f - \bar a_r)/\sigma_r$ of its token-averaged output (a filter's activation, a head's output norm).
  A backdoor's poisoned examples are fit with near-certainty, so their gradient $G_f$ vanishes and **mlr** picks the
  units the clean task leans on most; what those examples share, and clean ones lack, is the trigger;
- **random**: a seeded random choice with the same budget (a control).

### 3. Budget, warm start and greedy refinement
Sparsity $S$ is the fraction of units **frozen**: $(1-S)\,L H$ heads and $(1-S)\,L F$ filters are selected.
The diagonal scores give the **warm start**: a global ranking, hence a number $k_l$ of selected units per layer.
Then, layer by layer with $k_l$ fixed, the **greedy refinement** uses the layer's block of the empirical Fisher:
the cost of freezing a set $P$ is

$$\mathrm{cost}(P) = \sum_{i\in P} G_{f,i} + \frac{1}{2N}\sum_b\Big(\sum_{i\in P} s_{b,i}\Big)^2 ,$$

(for **mlf**: $-G_f$ and the forget-set blocks), which equals the diagonal score for a single unit but also sees
how units interact. Each selected unit (lowest
score first) is tried in the frozen set in place of the frozen unit whose removal gives the lowest cost; the swap
is kept only if the cost falls. The heatmaps above show the warm start and then each refined layer as it lands.

### 4. The update: only the selected units move
The default rule **so** takes one Fisher-preconditioned second-order step that *ascends* the forget loss:

$$\theta \leftarrow \theta + \eta\,\lVert\theta_M\rVert\,\frac{d}{\lVert d\rVert},\qquad
d = M \odot (\hat I_r + \lambda)^{-1} \odot \nabla_\theta \mathcal{L}(D_f),$$

with $M$ the parameters owned by the selected units, $\hat I_r$ the diagonal parameter Fisher on the retain sample and
$\lambda$ a damping term (so $\eta$ is relative: the fraction of $\lVert\theta_M\rVert$ the step moves). Every other
parameter stays **bit-identical**. With step size **auto**, $\eta$ is chosen from a small grid by forward passes only,
so that $D_f$ ends up looking the way it would to a model retrained without it, while retain accuracy stays within a
tolerance and the model still tells its retain examples apart from examples it never saw as well as it did before
(a step that leaves them correct but as unsure as unseen data is one a membership attack reads; a change of
confidence on every example alike, which retraining itself can make, is allowed); when $D_f$ is part of a class, the
rest of that class must stay correct too (at most the tolerance's
share of the retain check's examples of that class may turn wrong: the whole retain sample hides a step that breaks
one class), and, unless $D_f$ is a whole class, a smallest grid step that breaks either is stepped below, by
thirds. For a whole class that is accuracy 0 (a class the model never learned). For a random, partial-class or
pattern set it is the accuracy **and the confidence** of examples the model never saw, of the same classes (the
original's per-example losses on training examples a training limit left out, else on the test set, drawn in
$D_f$'s class mix, with each class's log-probability moved by $\log\pi'_c - \log\pi_c$, the change of the class
prior when $D_f$ leaves the training set: a model retrained without part of a class is less sure of that class):
the step is right when $P(\ell_f > \ell_{\text{unseen}}) \approx \tfrac12$. Accuracy alone is
not enough: on a set the model generalises to, accuracy is reached almost at once while the examples keep the
near-certain confidence of training data — and that confidence is exactly what a membership attack reads.
If the forget set already looks that way, nothing changes. If one step cannot get there within the tolerance, up to
nineteen more steps follow, each from the point reached and
along $M \odot (\hat I_r + \lambda)^{-1} \odot (\hat g_f - \hat g_r)$: $\hat g_f$ is the gradient of the *log* loss
of the forget examples still more confident than the unseen example of the same rank (for a class: the loss of those
still classified correctly, found on all of $D_f$ — the follow-ups go on until none is, and check their step sizes on
them), $\hat g_r$ the retain gradient that repairs what the previous steps cost. They stop
early, and say why, when a step brings $D_f$ no closer or breaks what the retain check allows (it is undone: first,
do no harm), or when the run would do more than half the model work of retraining (forward and backward passes,
counted: the user's alternative is to retrain).
Other rules: **ga** (gradient ascent on $D_f$), **gd** (ascent on $D_f$ + descent on $D_r$), **rl** (random labels
on $D_f$ + $D_r$), **npo** (negative preference optimisation against $\theta^*$) — all restricted to the same units.

### 5. How to read the results
- **FA / RA / TA**: accuracy on the forget set, on a fixed retain sample, on the test set. A good unlearned model
  matches the retrained one: FA drops to retrain's level while RA and TA stay.
- **MIA efficacy**: a membership-inference classifier trained on retain (member) vs test (non-member) examples,
  on the scaled confidence $\phi = \log p_y - \log\sum_{j\ne y} p_j$ (on the raw probability a near-certain model's
  members and non-members differ by $10^{-4}$), applied to $D_f$ and averaged over 16 resamples; the share judged
  "not a member". Higher = the forget set looks unseen; a retrained model's value is what unseen data reads.
- **Loss distance**: the Kolmogorov–Smirnov distance between $D_f$'s per-example losses under a model and under
  the retrained model (0 = the same distribution, 1 = disjoint); it needs no attacker. The loss-distribution chart
  shows the same thing as a picture.
- **Average gap to retrain**: $\frac14\sum_{k\in\{FA,RA,TA,MIA\}} |k - k_{\text{retrain}}|$, in points. Lower is better.
"""


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑩ About the method", elem_classes=["mape-section"])
    with gr.Accordion("How MAPE-Unlearn works (with the formulas)", open=False, elem_id="about"):
        gr.Markdown(ABOUT_MD, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                  {"left": "$", "right": "$", "display": False}])
    gr.Markdown(FOOTER)
    return SimpleNamespace()
