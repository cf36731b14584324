"""
01_xor.py: one neuron, then two layers, then backpropagation by hand, in NumPy.

You learn why a single neuron cannot solve XOR (a geometric argument, then a demonstration: it never gets more than
3 of the 4 points right); how a hidden layer fixes that (a 2 -> H -> 1 multi-layer perceptron written out by hand);
how backpropagation works (every layer's forward computation sits beside its backward computation, each gradient
line with the chain-rule step it implements); why binary cross-entropy on a sigmoid has the gradient `p - y`; how to
PROVE the gradients right (finite differences in float64); and how robust training is (--seeds 100).

    python 01_xor.py                        # the whole lesson, on a laptop CPU; PNGs in out/01_xor/
    python 01_xor.py --activation relu      # try sigmoid / tanh / relu hidden units
    python 01_xor.py --hidden 2 --seeds 100 # the smallest possible net: how often does it get stuck?
Only NumPy is needed; with matplotlib the decision boundary and loss curve are also saved as PNGs.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

# Config: every flag's default (python 01_xor.py --help lists the flags; names match). Why these values: HIDDEN 16,
# because 2 units suffice in principle but training often gets stuck with so few, and each extra unit is one more
# chance of a useful start; LR 0.5 with MOMENTUM 0.9, because every step sees all 4 examples (an exact gradient,
# so a big step is safe) and momentum crosses the flat start quickly; EPOCHS 500, a wide margin that also drives
# the probabilities close to 0 and 1. Check any of it yourself with --seeds 100 (README lists the measured rates).
HIDDEN = 16                     # --hidden: hidden units H (>= 1)
ACTIVATION = "tanh"             # --activation: hidden nonlinearity, "sigmoid", "tanh" or "relu"
LR = 0.5                        # --lr: learning rate (step size) of SGD
MOMENTUM = 0.9                  # --momentum: SGD momentum in [0, 1); 0 gives plain gradient descent
EPOCHS = 500                    # --epochs: training steps (one step = one pass over the 4 examples = one epoch)
SEED = 0                        # --seed: random seed of the initialisation (the only randomness in this script)
SEEDS = 1                       # --seeds: > 1 trains this many seeds (SEED, SEED+1, ...) and reports robustness
OUT = Path("out") / "01_xor"    # --out: folder for the PNGs (--no-plots skips them)


# ----------------------------------------------------------------------------------------------------------------
# 1. The data: XOR, and why no straight line can separate it
# ----------------------------------------------------------------------------------------------------------------
# The whole data set: the four corners of the unit square and their XOR ("exactly one input is on").
#
#     x1 x2 | y
#     0  0  | 0
#     0  1  | 1
#     1  0  | 1
#     1  1  | 0
X_XOR = np.array([[0.0, 0.0],
                  [0.0, 1.0],
                  [1.0, 0.0],
                  [1.0, 1.0]])                # (N, 2) with N = 4
Y_XOR = np.array([[0.0], [1.0], [1.0], [0.0]])  # (N, 1): a column, so it lines up with the network's output
#
# A single neuron computes p = sigmoid(w1*x1 + w2*x2 + b) and answers "1" where p > 0.5, that is where
# w1*x1 + w2*x2 + b > 0: on one side of a straight line. Can any line put the two 1s on one side and the two 0s on
# the other?
#
#        x2
#     1  1 ------- 0          The 1s sit on one diagonal of the square, the 0s on the other.
#        |  \   /  |          Geometric argument: one side of a line (a half-plane) is CONVEX: if it contains
#        |    X    |          two points it contains the whole segment between them. If the "1" side held both
#        |  /   \  |          1-points it would hold the midpoint of their diagonal, (0.5, 0.5); the "0" side
#     0  0 ------- 1  x1      would likewise hold the midpoint of the other diagonal, the SAME point (0.5, 0.5).
#        0         1          One point cannot lie strictly on both sides: no such line exists.
#
# The same in algebra: we would need b < 0 (for 00), w2 + b > 0 (01), w1 + b > 0 (10) and w1 + w2 + b < 0 (11).
# Adding the middle two gives w1 + w2 + 2b > 0, so w1 + w2 + b > -b > 0, which contradicts the last one.
#
# Any THREE of the points can be separated (three points not on one line can be split any way you like), so the
# best a line can do is 3 of 4: 75% accuracy. A hidden layer gets around this by bending the input space: each
# hidden unit draws its own line, and the output unit combines the half-planes (e.g. "above the line
# x1 + x2 = 0.5 AND below the line x1 + x2 = 1.5" is a band that holds exactly the two 1s).


def accuracy(p, y):
    """Fraction of examples where the thresholded probability (p > 0.5 means class 1) equals the label."""
    return float(np.mean((p > 0.5) == (y > 0.5)))


# ----------------------------------------------------------------------------------------------------------------
# Building blocks, each forward computation right beside its backward computation (micrograd style)
# ----------------------------------------------------------------------------------------------------------------
# Notation: L is the scalar loss. For any array A, "dA" holds dL/dA with the same shape as A. A backward function
# receives dL/d(its output) and returns dL/d(its inputs): that is all backpropagation is, the chain rule
#     dL/d(input) = dL/d(output) * d(output)/d(input)
# applied one building block at a time, from the loss back to the first layer.

# --- sigmoid: s(z) = 1 / (1 + exp(-z)), squashes any real number into (0, 1) ---------------------------------------
def sigmoid(z):
    # 1 / (1 + exp(-z)) overflows exp() for z below about -710 and NumPy prints a warning. The identity
    # sigmoid(z) = 0.5 * (1 + tanh(z / 2)) gives the same value and never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sigmoid_backward(dout, z, out):
    # ds/dz = exp(-z) / (1 + exp(-z))^2 = s(z) * (1 - s(z)): the derivative is written with the OUTPUT we kept
    # dL/dz = dL/ds * ds/dz = dout * s * (1 - s)
    return dout * out * (1.0 - out)


# --- tanh: t(z) = (e^z - e^-z) / (e^z + e^-z), like sigmoid but centred on 0, range (-1, 1) ---------------------
def tanh(z):
    return np.tanh(z)


def tanh_backward(dout, z, out):
    # dt/dz = 1 - tanh(z)^2
    # dL/dz = dL/dt * dt/dz = dout * (1 - t^2)
    return dout * (1.0 - out ** 2)


# --- ReLU: r(z) = max(0, z) -------------------------------------------------------------------------------------
def relu(z):
    return np.maximum(0.0, z)


def relu_backward(dout, z, out):
    # dr/dz = 1 where z > 0, 0 where z < 0 (at exactly z = 0 we pick 0, as PyTorch does)
    # dL/dz = dL/dr * dr/dz = dout * [z > 0]
    # So a ReLU unit whose line leaves all four points on its zero side is "dead": no gradient ever reaches it.
    return dout * (z > 0.0)


# name -> (forward, backward): the hidden layer looks its activation up here
ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_backward),
    "tanh": (tanh, tanh_backward),
    "relu": (relu, relu_backward),
}


# --- linear (fully connected) layer: out = x @ W + b ---------------------------------------------------------------
def linear(x, W, b):
    # out[n, j] = sum_i x[n, i] * W[i, j] + b[j]
    return x @ W + b                                   # (N, fan_in) @ (fan_in, fan_out) + (fan_out,) -> (N, fan_out)


def linear_backward(dout, x, W):
    # dL/dW[i, j] = sum_n dL/dout[n, j] * dout[n, j]/dW[i, j] = sum_n dout[n, j] * x[n, i]   (sum over examples)
    dW = x.T @ dout                                    # (fan_in, N) @ (N, fan_out) -> (fan_in, fan_out)
    # dL/db[j] = sum_n dL/dout[n, j] * dout[n, j]/db[j] = sum_n dout[n, j] * 1
    db = dout.sum(axis=0)                              # (fan_out,)
    # dL/dx[n, i] = sum_j dL/dout[n, j] * dout[n, j]/dx[n, i] = sum_j dout[n, j] * W[i, j]
    dx = dout @ W.T                                    # (N, fan_out) @ (fan_out, fan_in) -> (N, fan_in)
    return dx, dW, db


# --- binary cross-entropy on a sigmoid output, computed from the logit z --------------------------------------------
# For one example with label y in {0, 1} and predicted probability p = sigmoid(z):
#     loss = -[ y * log(p) + (1 - y) * log(1 - p) ]
# i.e. minus the log-probability the model gave to the RIGHT answer: 0 when it is sure and right, large when it is
# sure and wrong. We average over the N examples.
#
# Why its gradient with respect to the logit is simply p - y:
#     dloss/dp = -y / p + (1 - y) / (1 - p) = (p - y) / (p * (1 - p))
#     dp/dz    = p * (1 - p)                                      (the sigmoid derivative above)
#     dloss/dz = dloss/dp * dp/dz = (p - y) / (p (1 - p)) * p (1 - p) = p - y
# The p(1 - p) factors cancel. That matters: p(1 - p) is nearly 0 when the sigmoid saturates, so with a squared
# error loss a confidently WRONG output (p near 0 while y = 1) would get almost no gradient and learn very slowly.
# With cross-entropy the push is p - y, largest exactly when the model is most wrong.
#
# Numerically: log(sigmoid(z)) = -log(1 + e^-z) and log(1 - sigmoid(z)) = -log(1 + e^z), so
#     loss = log(1 + e^z) - y * z = logaddexp(0, z) - y * z
# which never takes log(0), however large |z| gets (this is what PyTorch's BCEWithLogitsLoss does too).
def bce_with_logits(z, y):
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def bce_with_logits_backward(z, y):
    # dL/dz[n] = (sigmoid(z[n]) - y[n]) / N     (the 1/N comes from the mean over the N examples)
    return (sigmoid(z) - y) / z.shape[0]               # (N, 1)


# ----------------------------------------------------------------------------------------------------------------
# 2. A single neuron (logistic regression) trained on XOR
# ----------------------------------------------------------------------------------------------------------------
NEURON_LR = 0.5  # learning rate of the single logistic neuron (it trains for --epochs too)


def train_neuron(X, y, epochs=EPOCHS, lr=NEURON_LR, seed=SEED):
    """Gradient descent on one logistic unit p = sigmoid(X @ w + b). Returns a dict with its history.

    What happens on XOR: the loss is convex in (w, b) and its minimum is at w = 0, b = 0, where p = 0.5 for every
    input and the loss is log(2) = 0.693. (Check: at that point the gradient sum_n (p_n - y_n) x_n is
    0.5*(0,0) - 0.5*(0,1) - 0.5*(1,0) + 0.5*(1,1) = (0, 0).) The best the neuron can do on the loss is to give
    up and say "50/50" everywhere. On the way there its line sweeps through positions that get at most 3 points
    right: we record the best of them.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, size=(2, 1))              # (2, 1)
    b = rng.normal(0.0, 1.0, size=(1,))                # (1,)
    best = {"acc": -1.0}
    losses, accs = [], []
    for epoch in range(epochs + 1):
        z = linear(X, w, b)                            # (N, 1) logits
        p = sigmoid(z)                                 # (N, 1) probabilities
        acc = accuracy(p, y)
        losses.append(bce_with_logits(z, y))
        accs.append(acc)
        if acc > best["acc"]:                          # remember the best line seen so far
            best = {"acc": acc, "epoch": epoch, "w": w.ravel().copy(), "b": float(b[0])}
        if epoch == epochs:
            break
        dz = bce_with_logits_backward(z, y)            # dL/dz = (p - y) / N
        _, dw, db = linear_backward(dz, X, w)          # chain rule through the linear layer
        w -= lr * dw                                   # gradient descent step
        b -= lr * db
    return {"w": w.ravel(), "b": float(b[0]), "p": p.ravel(), "acc": accs[-1], "loss": losses[-1],
            "losses": losses, "accs": accs, "best": best}


def best_line_by_search(X, y, n_angles=360, n_offsets=301):
    """Try many lines cos(a)*x1 + sin(a)*x2 = c; return the best accuracy and one line that reaches it.

    Not a proof (the geometric argument above is the proof), but a concrete check: among 108,000 lines through
    and around the square, none classifies all four points right. Among the lines with the best accuracy we
    return the one that stays farthest from all four points (the clearest example, not one that grazes a corner).
    """
    angles = np.linspace(0.0, 2.0 * np.pi, n_angles, endpoint=False)      # every direction of the normal
    offsets = np.linspace(-1.5, 1.5, n_offsets)                           # c covers lines through the square
    normals = np.stack([np.cos(angles), np.sin(angles)], axis=1)          # (A, 2) unit normals
    proj = X @ normals.T                                                  # (N, A): position of each point along it
    signed = proj[:, :, None] - offsets[None, None, :]                    # (N, A, C): signed distance to the line
    pred = signed > 0.0                                                   # predicted 1 on the positive side
    acc = (pred == (y > 0.5)[:, :, None]).mean(axis=0)                    # (A, C) accuracy of every line
    margin = np.abs(signed).min(axis=0)                                   # (A, C) distance to the closest point
    score = np.where(acc == acc.max(), margin, -1.0)                      # best accuracy first, then widest margin
    a, c = np.unravel_index(np.argmax(score), score.shape)
    return float(acc[a, c]), normals[a], float(offsets[c])


def line_equation(w, b):
    """'1.23*x1 - 0.45*x2 + 0.10 = 0' for a line w1*x1 + w2*x2 + b = 0."""
    return f"{w[0]:+.3f}*x1 {w[1]:+.3f}*x2 {b:+.3f} = 0".lstrip("+")


# ----------------------------------------------------------------------------------------------------------------
# 3. The two-layer MLP: 2 inputs -> H hidden units (activation) -> 1 output (sigmoid)
# ----------------------------------------------------------------------------------------------------------------
def init_params(hidden=HIDDEN, seed=SEED, activation=ACTIVATION):
    """Random float64 weights for the 2 -> hidden -> 1 network: a dict W1 (2, H), b1 (H,), W2 (H, 1), b2 (1,).

    Weights ~ N(0, gain^2 / fan_in): dividing by fan_in keeps the variance of each layer's pre-activation about
    the same as its inputs' (not exploding, not vanishing). gain = sqrt(2) for ReLU, because ReLU zeroes half of
    its inputs and so halves the variance ("He" initialisation); gain = 1 for tanh and sigmoid ("LeCun").
    The hidden biases are drawn too (small, N(0, 0.5^2)), not zeros: with zero biases every hidden line would start
    through the origin, the point (0, 0) would sit exactly on ReLU's kink (z = 0) for every unit, and units would
    start more alike. Random weights matter most: if all units started equal they would get equal gradients and
    stay clones forever (the symmetry would never break).
    """
    if hidden < 1:
        raise ValueError(f"hidden size must be >= 1, got {hidden}")
    rng = np.random.default_rng(seed)
    gain = np.sqrt(2.0) if activation == "relu" else 1.0
    return {
        "W1": rng.normal(0.0, gain / np.sqrt(2), size=(2, hidden)),       # (2, H): fan_in = 2 inputs
        "b1": rng.normal(0.0, 0.5, size=(hidden,)),                       # (H,)
        "W2": rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, 1)),   # (H, 1): fan_in = H hidden units
        "b2": np.zeros(1),                                                # (1,)
    }


def forward(params, X, activation=ACTIVATION):
    """Run the network on X (N, 2). Returns (p, cache): probabilities (N, 1) and what backward() needs."""
    act, _ = ACTIVATIONS[activation]
    z1 = linear(X, params["W1"], params["b1"])         # (N, H)  hidden pre-activations: z1 = X W1 + b1
    h = act(z1)                                        # (N, H)  hidden activations:     h = act(z1)
    z2 = linear(h, params["W2"], params["b2"])         # (N, 1)  output logit:           z2 = h W2 + b2
    p = sigmoid(z2)                                    # (N, 1)  probability of class 1: p = sigmoid(z2)
    cache = {"X": X, "z1": z1, "h": h, "z2": z2, "p": p, "activation": activation}
    return p, cache


def loss_of(params, X, y, activation=ACTIVATION):
    """Mean binary cross-entropy of the network on (X, y): the number training drives down."""
    _, cache = forward(params, X, activation)
    return bce_with_logits(cache["z2"], y)


def backward(params, cache, y):
    """All gradients dL/dparam of the mean BCE loss, by the chain rule from the loss back to the input layer.

    Read it bottom-up against forward(): each line undoes one line there, in reverse order.
    Returns a dict with the same keys and shapes as params.
    """
    _, act_backward = ACTIVATIONS[cache["activation"]]
    # loss -> z2:  dL/dz2 = (p - y) / N                                   (BCE + sigmoid, derived above)
    dz2 = bce_with_logits_backward(cache["z2"], y)     # (N, 1)
    # z2 = h W2 + b2  ->  dL/dW2 = h^T dz2,  dL/db2 = sum_n dz2,  dL/dh = dz2 W2^T
    dh, dW2, db2 = linear_backward(dz2, cache["h"], params["W2"])         # (N, H), (H, 1), (1,)
    # h = act(z1)  ->  dL/dz1 = dL/dh * act'(z1)                          (elementwise)
    dz1 = act_backward(dh, cache["z1"], cache["h"])    # (N, H)
    # z1 = X W1 + b1  ->  dL/dW1 = X^T dz1,  dL/db1 = sum_n dz1           (dL/dX is not needed: X is data)
    _, dW1, db1 = linear_backward(dz1, cache["X"], params["W1"])          # (2, H), (H,)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


# ----------------------------------------------------------------------------------------------------------------
# 4. Gradient check: are the hand-written gradients right?
# ----------------------------------------------------------------------------------------------------------------
# The derivative is the limit of a difference quotient. The CENTRAL difference with a small step h
#     D(h) = (L(theta + h) - L(theta - h)) / (2h)  =  dL/dtheta + c*h^2 + O(h^4)
# is much better than the one-sided (L(theta + h) - L(theta)) / h, whose error shrinks only like h. Its error
# still has two parts pulling in opposite directions: the truncation term c*h^2 wants a small h, while rounding
# (float64 keeps about 16 digits, so L = 0.7 is only known to about 1e-16) contributes 1e-16 / h and wants a large
# h. With h = 1e-5 both are about 1e-11, which is not quite enough for gradient entries that happen to be small.
# A classic trick (Richardson extrapolation) removes the c*h^2 term: D(2h) = dL/dtheta + 4c*h^2 + ..., so
#     (4*D(h) - D(2h)) / 3 = (8*(L(+h) - L(-h)) - (L(+2h) - L(-2h))) / (12h) = dL/dtheta + O(h^4)
# is still a central difference (symmetric around theta), and now a larger h = 1e-3 is safe: truncation is about
# h^4 = 1e-12 times a small constant, rounding about 1e-16 / h = 1e-13. Analytic and numerical gradients then agree to
# about 1e-10 relative, while a wrong backward line (a missing transpose, a forgotten factor) gives errors near 1:
# the check separates right from wrong by many orders of magnitude. The only entries that do worse are those whose
# gradient is itself tiny: finite differences resolve a gradient to about 1e-13 absolute, so an entry of size 1e-7
# is only checked to about 1e-6 relative. Hence the tolerance GRAD_CHECK_TOL = 1e-6: where an entry misses a tighter
# one, it is the yardstick that is blunt, not the gradient.
#
# One trap: ReLU has a kink at z = 0. A difference whose two points straddle the kink measures the average of two
# different slopes, not the derivative, and the check fails although backward() is right. Moving any first-layer
# parameter by s moves each z1 by at most |s| (the inputs are 0 or 1), so for ReLU we shrink h below a quarter of
# the smallest |z1|: then even the 2h steps cannot cross a kink.
GRAD_CHECK_EPS = 1e-3  # step h of the (fourth-order) central finite differences, float64
GRAD_CHECK_TOL = 1e-6  # the gradient check passes when the largest relative error is below this


def relative_error(a, b):
    """|a - b| / max(|a| + |b|, 1e-8), elementwise: scale-free, and 0/0-safe where both gradients vanish."""
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)


def numerical_gradients(params, X, y, activation=ACTIVATION, eps=GRAD_CHECK_EPS):
    """Fourth-order central differences of the loss for every single parameter (4 forward passes each)."""
    grads = {}
    for name, value in params.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):            # every entry of W1, b1, W2, b2 in turn
            original = value[idx]
            loss_at = {}
            for step in (-2, -1, 1, 2):                # theta - 2h, theta - h, theta + h, theta + 2h
                value[idx] = original + step * eps
                loss_at[step] = loss_of(params, X, y, activation)
            value[idx] = original                      # put it back exactly as it was
            # differences first, then combine: when L does not change at all the result is exactly 0
            g[idx] = (8.0 * (loss_at[1] - loss_at[-1]) - (loss_at[2] - loss_at[-2])) / (12.0 * eps)
        grads[name] = g
    return grads


def gradient_check(params, X, y, activation=ACTIVATION, eps=GRAD_CHECK_EPS):
    """Largest relative error between backward() and finite differences over every parameter entry.

    Returns (max_error, {name: max error within that parameter}, the step h used).
    """
    _, cache = forward(params, X, activation)
    analytic = backward(params, cache, y)
    if activation == "relu":                           # keep every step away from ReLU's kink (see above)
        eps = min(eps, 0.25 * float(np.abs(cache["z1"]).min()))
    numeric = numerical_gradients(params, X, y, activation, eps)
    per_name = {name: float(relative_error(analytic[name], numeric[name]).max()) for name in params}
    return max(per_name.values()), per_name, eps


# ----------------------------------------------------------------------------------------------------------------
# 5. Training: SGD with optional momentum
# ----------------------------------------------------------------------------------------------------------------
# Plain SGD:     theta <- theta - lr * g
# With momentum: v <- momentum * v + g;  theta <- theta - lr * v       (the form torch.optim.SGD uses)
# v is a running, decaying sum of past gradients. Where successive gradients agree (a long gentle slope, like the
# plateau at the start of XOR training) the steps add up to about lr / (1 - momentum) = 10x larger; where they
# flip sign (across a narrow valley) they cancel. With 4 examples every step sees all of them, so "stochastic"
# gradient descent is here full-batch gradient descent: the same update rule, exact gradients.
def sgd_step(params, grads, velocity, lr, momentum):
    """One in-place update of every parameter. velocity is a dict like params (zeros at the start)."""
    for name in params:
        velocity[name] = momentum * velocity[name] + grads[name]
        params[name] -= lr * velocity[name]


def train(params, X, y, activation=ACTIVATION, lr=LR, momentum=MOMENTUM, epochs=EPOCHS, log_every=0):
    """Train in place. Returns the history: loss and accuracy per epoch, and the first epoch at 100% accuracy.

    log_every > 0 prints a line every that many epochs (epoch/total, loss, accuracy, elapsed time).
    A learning rate that is far too large makes the weights overflow to inf/nan ("divergence"): training then
    stops, and history["diverged"] holds the epoch (else None), so the caller can say "use a smaller --lr".
    """
    velocity = {name: np.zeros_like(value) for name, value in params.items()}
    losses, accs = [], []
    first_perfect = None                               # first epoch at which all 4 answers were right
    diverged = None
    start = time.perf_counter()
    for epoch in range(epochs + 1):                    # epoch 0 is the untrained network
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is detected just below, not warned about
            p, cache = forward(params, X, activation)  # forward pass on all 4 examples
            loss = bce_with_logits(cache["z2"], y)
        acc = accuracy(p, y)
        losses.append(loss)
        accs.append(acc)
        if not np.isfinite(loss):
            diverged = epoch
            break
        if acc == 1.0 and first_perfect is None:
            first_perfect = epoch
        if log_every and (epoch % log_every == 0 or epoch == epochs):
            print(f"  epoch {epoch:5d}/{epochs}  loss {loss:.5f}  accuracy {acc:6.1%}  "
                  f"{time.perf_counter() - start:5.2f}s")
        if epoch == epochs:
            break
        grads = backward(params, cache, y)             # backward pass: every dL/dparam
        with np.errstate(over="ignore", invalid="ignore"):
            sgd_step(params, grads, velocity, lr, momentum)
    return {"losses": losses, "accs": accs, "first_perfect": first_perfect, "diverged": diverged}


# ----------------------------------------------------------------------------------------------------------------
# 6. Evaluation and pictures
# ----------------------------------------------------------------------------------------------------------------
def ascii_boundary(predict, width=41, height=21, lo=-0.5, hi=1.5):
    """A text map of the decision regions over [lo, hi]^2: '#' where the model says 1, '.' where it says 0.

    predict maps an (M, 2) array of points to (M,) probabilities. The four data points are drawn as their
    labels (0 or 1), so you can see which region each one fell in.
    """
    xs = np.linspace(lo, hi, width)
    ys = np.linspace(hi, lo, height)                   # top row = largest x2, as on paper
    gx, gy = np.meshgrid(xs, ys)                       # (height, width) each
    probs = predict(np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(height, width)
    rows = [["#" if q > 0.5 else "." for q in row] for row in probs]
    for (x1, x2), label in zip(X_XOR, Y_XOR.ravel()):  # overwrite the cells nearest to the 4 data points
        col = int(round((x1 - lo) / (hi - lo) * (width - 1)))
        row = int(round((hi - x2) / (hi - lo) * (height - 1)))
        rows[row][col] = str(int(label))
    margin = " " * 10                                  # room for the x2 labels on the left
    lines = [f"  x2={hi:+.1f} " + "".join(rows[0])]
    lines += [margin + "".join(r) for r in rows[1:-1]]
    lines += [f"  x2={lo:+.1f} " + "".join(rows[-1])]
    lines += [margin + f"x1={lo:+.1f}" + " " * (width - 14) + f"x1={hi:+.1f}"]
    return "\n".join(lines)


def save_plots(out_dir, params, activation, history, neuron):
    """Decision boundary and loss curves as PNGs. Returns the paths written, or [] when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")                          # draw to files, no window needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: no PNGs; the ASCII map above shows the same boundary)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        # write to a temporary file, then rename: an interrupted run never leaves half a PNG
        path = out_dir / name
        tmp = path.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=100, format="png")   # fixed margins (set below): tight_layout would double the time
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    # --- decision boundary: the MLP's probability over the plane, the neuron's line, the four points ---
    lo, hi, n = -0.5, 1.5, 161
    gx, gy = np.meshgrid(np.linspace(lo, hi, n), np.linspace(lo, hi, n))  # (n, n) each; row 0 is x2 = lo
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)                     # (n*n, 2)
    with np.errstate(over="ignore", invalid="ignore"):                    # quiet if training diverged
        probs = forward(params, grid, activation)[0].reshape(n, n)        # (n, n)
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.11, top=0.93)
    image = ax.imshow(probs, extent=(lo, hi, lo, hi), origin="lower", cmap="RdBu_r", vmin=0, vmax=1, alpha=0.85)
    if np.isfinite(probs).all() and probs.min() < 0.5 < probs.max():    # a boundary exists to be drawn
        ax.contour(gx, gy, probs, levels=[0.5], colors="k", linewidths=2) # the decision boundary p = 0.5
    fig.colorbar(image, ax=ax, label="MLP: P(y = 1)")
    w, b = neuron["best"]["w"], neuron["best"]["b"]
    if abs(w[1]) > 1e-12:                              # draw the neuron's best line w1 x1 + w2 x2 + b = 0
        xs = np.array([lo, hi])
        ax.plot(xs, -(w[0] * xs + b) / w[1], "g--", lw=1.5,
                label=f"best single-neuron line ({neuron['best']['acc']:.0%})")
    for (x1, x2), label in zip(X_XOR, Y_XOR.ravel()):
        ax.scatter(x1, x2, s=160, c="white" if label == 0 else "black", edgecolors="k", zorder=3)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="x1", ylabel="x2",
           title=f"XOR: 2-{len(params['b1'])}-1 MLP ({activation}), black = class 1")
    ax.legend(loc="lower left", fontsize=8)
    save(fig, "decision_boundary.png")

    # --- loss curves: the MLP goes to ~0, the single neuron gets stuck at log(2) ---
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.91)
    ax.plot(history["losses"], label=f"MLP ({activation})")
    ax.plot(neuron["losses"], label="single neuron")
    ax.axhline(np.log(2.0), color="gray", ls=":", label="log 2 (always say 0.5)")
    ax.set(yscale="log", xlabel="epoch", ylabel="mean binary cross-entropy", title="Training loss on XOR")
    ax.legend()
    save(fig, "loss_curve.png")
    return written


# ----------------------------------------------------------------------------------------------------------------
# 7. Robustness: many seeds
# ----------------------------------------------------------------------------------------------------------------
def seed_study(args):
    """Train args.seeds networks (seeds args.seed, args.seed + 1, ...); print success rate and epochs to 100%."""
    print(f"Training {args.seeds} seeds ({args.seed}..{args.seed + args.seeds - 1}): 2-{args.hidden}-1 MLP, "
          f"{args.activation}, lr {args.lr}, momentum {args.momentum}, {args.epochs} epochs")
    successes, epochs_needed, failed = 0, [], []
    start = time.perf_counter()
    report_every = max(1, args.seeds // 10)
    for i in range(args.seeds):
        seed = args.seed + i
        params = init_params(args.hidden, seed, args.activation)
        history = train(params, X_XOR, Y_XOR, args.activation, args.lr, args.momentum, args.epochs)
        if history["accs"][-1] == 1.0 and history["diverged"] is None:   # success = 100% at the END of training
            successes += 1
            epochs_needed.append(history["first_perfect"])
        else:
            failed.append(seed)
        done = i + 1
        if done % report_every == 0 or done == args.seeds:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (args.seeds - done)
            print(f"  {done:4d}/{args.seeds} seeds  {successes} reached 100%  {elapsed:5.1f}s elapsed, ETA {eta:4.1f}s")
    print(f"success rate: {successes}/{args.seeds} = {successes / args.seeds:.1%} of seeds reach 100% accuracy")
    if epochs_needed:
        print(f"epochs to 100% (successful seeds): median {np.median(epochs_needed):.0f}, "
              f"min {min(epochs_needed)}, max {max(epochs_needed)}")
    if failed:
        shown = ", ".join(map(str, failed[:20])) + (" ..." if len(failed) > 20 else "")
        print(f"seeds that did not reach 100%: {shown}  (rerun one with --seed S to watch it)")
    return successes


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def positive(cast):
    """An argparse type: the value converted by cast (int or float), finite and > 0; else argparse's usage + error."""
    def convert(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {cast.__name__}, got {text!r}") from None
        if not (np.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a positive {cast.__name__}, got {text!r}")
        return value
    return convert


def momentum_value(text):
    """An argparse type: a float in [0, 1) (1 or more makes the velocity grow without bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def parse_args(argv=None):
    """Flags -> args, named like the config constants. A bad value ends in argparse's usage line plus one error
    line and exit status 2, before any work starts."""
    parser = argparse.ArgumentParser(description="XOR with one neuron and with a hand-written 2-layer MLP (NumPy).")
    parser.add_argument("--hidden", type=positive(int), default=HIDDEN, help=f"hidden units (default {HIDDEN})")
    parser.add_argument("--activation", choices=tuple(ACTIVATIONS), default=ACTIVATION, help="hidden nonlinearity")
    parser.add_argument("--lr", type=positive(float), default=LR, help=f"learning rate (default {LR})")
    parser.add_argument("--momentum", type=momentum_value, default=MOMENTUM, help="SGD momentum in [0, 1)")
    parser.add_argument("--epochs", type=positive(int), default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    parser.add_argument("--seeds", type=positive(int), default=SEEDS, help="> 1: train this many seeds (robustness)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (the ASCII map is always printed)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default {OUT})")
    # parse_known_args: Jupyter/Colab pass their own arguments (e.g. -f kernel.json); ignore those, note the rest
    args, unknown = parser.parse_known_args(argv)
    if unknown and not any(u.endswith(".json") for u in unknown):
        print(f"note: ignoring unknown arguments {' '.join(unknown)}", file=sys.stderr)
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    np.set_printoptions(precision=4, suppress=True)
    if args.seeds > 1:
        seed_study(args)
        print(f"done in {time.perf_counter() - t0:.1f}s")
        return
    X, y = X_XOR, Y_XOR

    print("== 1. The data: XOR ==")
    print("  x1 x2 | y")
    for (x1, x2), label in zip(X, y.ravel()):
        print(f"   {x1:.0f}  {x2:.0f} | {label:.0f}")
    print("  The 1s lie on one diagonal of the square, the 0s on the other: no straight line separates them.")

    print("\n== 2. A single neuron p = sigmoid(w1*x1 + w2*x2 + b) ==")
    neuron = train_neuron(X, y, epochs=args.epochs, seed=args.seed)
    best = neuron["best"]
    print(f"  after {args.epochs} epochs: loss {neuron['loss']:.4f} (log 2 = {np.log(2):.4f}), "
          f"p = {neuron['p'].round(4)}, accuracy {neuron['acc']:.0%}")
    print("  the loss is lowest at w = 0, b = 0: the neuron learns to answer 0.5 for every input, so its final")
    print("  'answers' are coin flips decided by rounding; the line it drew on the way there is more telling:")
    print(f"  its best line during training: {line_equation(best['w'], best['b'])} "
          f"(epoch {best['epoch']}), accuracy {best['acc']:.0%}")
    search_acc, normal, offset = best_line_by_search(X, y)
    print(f"  best of 108,000 lines tried: {line_equation(normal, -offset)}, accuracy {search_acc:.0%}: "
          f"no line gets all 4 right")

    print(f"\n== 3. A 2-{args.hidden}-1 MLP, {args.activation} hidden units, sigmoid output, BCE loss ==")
    params = init_params(args.hidden, args.seed, args.activation)
    n_params = sum(v.size for v in params.values())
    print(f"  parameters: W1 {params['W1'].shape}, b1 {params['b1'].shape}, W2 {params['W2'].shape}, "
          f"b2 {params['b2'].shape}: {n_params} numbers")

    print("\n== 4. Gradient check: backward() vs central finite differences, float64, before training ==")
    max_err, per_name, step = gradient_check(params, X, y, args.activation)
    details = ", ".join(f"{name} {err:.1e}" for name, err in per_name.items())
    verdict = "PASS" if max_err < GRAD_CHECK_TOL else "FAIL"
    print(f"  step h = {step:.0e}; max relative error per parameter: {details}")
    print(f"  max relative error {max_err:.2e} over all {n_params} entries: {verdict} (tolerance {GRAD_CHECK_TOL:.0e})")

    print(f"\n== 5. Training: SGD, lr {args.lr}, momentum {args.momentum}, {args.epochs} epochs ==")
    history = train(params, X, y, args.activation, args.lr, args.momentum, args.epochs,
                    log_every=max(1, args.epochs // 10))
    if history["diverged"] is not None:
        print(f"  training DIVERGED at epoch {history['diverged']} (the loss became inf/nan): "
              f"the steps are too large, try a smaller --lr than {args.lr}")
    with np.errstate(over="ignore", invalid="ignore"):
        p, _ = forward(params, X, args.activation)
    print("\n  x1 x2 | y | P(y=1)  prediction")
    for (x1, x2), label, prob in zip(X, y.ravel(), p.ravel()):
        mark = "ok" if (prob > 0.5) == (label > 0.5) else "WRONG"
        print(f"   {x1:.0f}  {x2:.0f} | {label:.0f} | {prob:.4f}  {int(prob > 0.5)} {mark}")
    acc = accuracy(p, y)
    reached = (f"first reached at epoch {history['first_perfect']}" if history["first_perfect"] is not None
               else "never reached 100%")
    print(f"  accuracy {acc:.0%} ({reached}), final loss {history['losses'][-1]:.5f}")

    print("\n== 6. Decision boundary ('#' = predicts 1, '.' = predicts 0, digits = the 4 data points) ==")
    with np.errstate(over="ignore", invalid="ignore"):                    # quiet if training diverged
        print(ascii_boundary(lambda pts: forward(params, pts, args.activation)[0].ravel()))
    if not args.no_plots:
        with np.errstate(over="ignore", invalid="ignore"):                # absurd --lr values give absurd losses
            written = save_plots(args.out, params, args.activation, history, neuron)
        for path in written:
            print(f"  wrote {path}")

    print(f"\nsummary: single neuron best {best['acc']:.0%} | MLP accuracy {acc:.0%} | "
          f"gradient check max rel. error {max_err:.1e} ({verdict}) | {time.perf_counter() - t0:.2f}s")
    print("next: try --hidden 2 --seeds 100, or --activation relu; then 02_embeddings.py")


if __name__ == "__main__":
    main()
