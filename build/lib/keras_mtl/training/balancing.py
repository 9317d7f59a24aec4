"""Gradient-level task balancing for the strategies that sum task losses (SoftMTL, CrossSoftMTL).

uncertainty  Kendall, Gal & Cipolla, "Multi-task learning using uncertainty to weigh losses", CVPR 2018:
             L = sum_k 0.5 exp(-s_k) L_k + 0.5 s_k, with s_k = log sigma_k^2 learnt with the network
             (one variable per task, starting at 0).
pcgrad       Yu et al., "Gradient surgery for multi-task learning", NeurIPS 2020: on the shared
             variables, each task's gradient g_i is projected off every other task's g_j it conflicts
             with (g_i . g_j < 0): g_i <- g_i - (g_i . g_j / |g_j|^2) g_j; the projected gradients are
             averaged. The other tasks are taken in a fixed cyclic order (the paper shuffles), so that
             runs are reproducible and tf.distribute replicas agree.
cagrad       Liu et al., "Conflict-averse gradient descent for multi-task learning", NeurIPS 2021: the
             update d = (g0 + sqrt(phi) / |g_w| g_w) / (1 + c^2) with g0 the mean gradient, phi = c^2 |g0|^2
             and g_w = sum_k w_k g_k, w on the simplex minimising g_w . g0 + sqrt(phi) |g_w| (solved on the
             K x K Gram matrix by gradient descent on softmax logits); c = 0 gives the mean gradient.
gradnorm     Chen et al., "GradNorm", ICML 2018: loss weights w_k (sum 1) moved every step so that the
             weighted task gradient norms G_k = w_k |g_k| on the shared variables follow
             mean(G) * r_k^alpha, r_k the task's loss ratio L_k / L_k(first step) over its mean (alpha 1.5);
             |g_k| is taken over all shared variables, not only the last shared layer (they are computed
             anyway); step size 0.025 on the sign of |G_k - target_k| times |g_k| / mean |g|; every
             weight stays at least ``gradnorm_min_share`` / K (training.gradnorm_min_share; 1e-3 at least).
famo         Liu et al., "FAMO: fast adaptive multitask optimization", NeurIPS 2023: one backward pass of
             sum_k z_k log L_k / c (z = softmax(xi), c = sum_k z_k / L_k, both held constant), so every
             task's loss falls at a similar rate; after each step an Adam step (learning rate beta) of xi
             along J_softmax^T delta + gamma xi, delta_k the fall of log L_k since the previous step,
             beta 0.025, gamma 0.001 (the paper's values and optimiser); the fall is measured on the next
             batch, not on the same batch after the step (no extra forward pass).

The task-specific variables get the gradient of the mean task loss; every method logs, per epoch, the
cosine between every pair of tasks' gradients on the shared variables (``cos_<a>_<b>`` in history.csv).
"""

from __future__ import annotations

import itertools

from keras_mtl.core.backend import tf
from keras_mtl.core.errors import ConfigError

CAGRAD_C = 0.5
CAGRAD_STEPS = 25


def pcgrad(gradients: tf.Tensor) -> tf.Tensor:
    """(K, P) per-task gradients -> (K, P) after PCGrad's projections (each against the original others)."""
    count = int(gradients.shape[0])
    projected = []
    for i in range(count):
        g = gradients[i]
        for step in range(1, count):
            other = gradients[(i + step) % count]
            dot = tf.reduce_sum(g * other)
            norm = tf.reduce_sum(other * other)
            g = tf.where(dot < 0.0, g - dot / tf.maximum(norm, 1e-20) * other, g)
        projected.append(g)
    return tf.stack(projected)


def cagrad(gradients: tf.Tensor, c: float = CAGRAD_C, steps: int = CAGRAD_STEPS) -> tf.Tensor:
    """(K, P) per-task gradients -> the (P,) CAGrad update direction."""
    count = int(gradients.shape[0])
    mean = tf.reduce_mean(gradients, axis=0)
    if c == 0.0:
        return mean
    gram = tf.matmul(gradients, gradients, transpose_b=True)  # (K, K)
    towards_mean = tf.reduce_mean(gram, axis=1)  # g_k . g0
    phi = c**2 * tf.reduce_mean(gram)  # c^2 |g0|^2
    scale = tf.sqrt(tf.reduce_mean(tf.abs(gram)) + 1e-20)  # keeps the inner step size scale-free
    logits = tf.zeros([count])
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            w = tf.nn.softmax(logits)
            objective = tf.reduce_sum(w * towards_mean) + tf.sqrt(phi) * tf.sqrt(
                tf.reduce_sum(w[:, None] * gram * w[None, :]) + 1e-20
            )
        logits -= 1.0 * tape.gradient(objective, logits) / (scale**2)
    w = tf.nn.softmax(logits)
    g_w = tf.reduce_sum(w[:, None] * gradients, axis=0)
    norm = tf.sqrt(tf.reduce_sum(g_w * g_w) + 1e-20)
    return (mean + tf.sqrt(phi) / norm * g_w) / (1.0 + c**2)


def uncertainty_loss(losses, log_variances) -> tf.Tensor:
    """sum_k 0.5 exp(-s_k) L_k + 0.5 s_k (Kendall et al. 2018)."""
    return tf.add_n([0.5 * tf.exp(-s) * loss + 0.5 * s for loss, s in zip(losses, log_variances)])


def cosines(gradients: tf.Tensor) -> dict[tuple[int, int], tf.Tensor]:
    """{(i, j): cos(g_i, g_j)} for every pair of rows of (K, P) gradients."""
    norms = tf.sqrt(tf.reduce_sum(gradients * gradients, axis=1) + 1e-20)
    return {
        (i, j): tf.reduce_sum(gradients[i] * gradients[j]) / (norms[i] * norms[j])
        for i, j in itertools.combinations(range(int(gradients.shape[0])), 2)
    }


class Balancer:
    """How a summing strategy turns its task losses into one update. ``per_task`` methods take the
    gradient of every task's loss on the shared variables; ``variables`` are learnt with the network."""

    per_task = True

    def __init__(self, strategy):
        self.strategy = strategy
        self.variables: list = []  # learnt with the network (in the optimizer and the checkpoint)
        self.state: list = []  # updated by the method's own rule (in the checkpoint)

    def total(self, losses: list) -> tf.Tensor:
        """The scalar whose gradient the task-specific variables follow (the mean task loss)."""
        return tf.add_n(losses) / float(len(losses))

    def shared_direction(self, gradients: tf.Tensor, losses: list) -> tf.Tensor:
        """(K, P) per-task gradients on the shared variables -> the (P,) update direction (here their mean)."""
        return tf.reduce_mean(gradients, axis=0)

    def after_step(self, losses: list) -> None:
        """State updates once the step's losses are known (for methods that keep state)."""

    def log_weights(self) -> list | None:
        return None


def replica_mean(value):
    """The mean of ``value`` over tf.distribute replicas (itself without distribution), so that every
    replica updates a balancer's state identically."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


class PCGrad(Balancer):
    def shared_direction(self, gradients, losses):
        return tf.reduce_mean(pcgrad(gradients), axis=0)


class CAGrad(Balancer):
    def shared_direction(self, gradients, losses):
        return cagrad(gradients, CAGRAD_C)


class GradNorm(Balancer):
    alpha = 1.5
    step_size = 0.025

    def __init__(self, strategy):
        super().__init__(strategy)
        count = len(strategy.task_names)
        # every task keeps at least this share of an equal weight (1/K): StrategyOptions.gradnorm_min_share
        self.min_share = float(getattr(strategy.options, "gradnorm_min_share", 0.0))
        self.weights = [strategy.loss_weights[name] for name in strategy.task_names]
        for weight in self.weights:
            weight.assign(1.0 / count)
        self.initial = tf.Variable(tf.zeros([count]), trainable=False, name="gradnorm_initial_losses")
        self.state = [self.initial]

    def total(self, losses):
        return tf.add_n([w * loss for w, loss in zip(self.weights, losses)])

    def shared_direction(self, gradients, losses):
        w = tf.stack([tf.identity(weight) for weight in self.weights])
        direction = tf.reduce_sum(w[:, None] * gradients, axis=0)
        norms = replica_mean(tf.sqrt(tf.reduce_sum(gradients * gradients, axis=1) + 1e-20))
        current = replica_mean(tf.stack(losses))
        initial = tf.where(self.initial > 0.0, self.initial, current)
        self.initial.assign(initial)
        ratios = current / tf.maximum(initial, 1e-12)
        target = tf.reduce_mean(w * norms) * (ratios / tf.reduce_mean(ratios)) ** self.alpha
        step = tf.sign(w * norms - tf.stop_gradient(target)) * norms / tf.reduce_mean(norms)
        floor = max(self.min_share / float(len(self.weights)), 1e-3)
        above = tf.maximum(w - self.step_size * step - floor, 0.0)  # the weights less the floor, on the simplex
        new = floor + (1.0 - floor * len(self.weights)) * above / tf.maximum(tf.reduce_sum(above), 1e-12)
        for weight, value in zip(self.weights, tf.unstack(new)):
            weight.assign(value)
        return direction


class FAMO(Balancer):
    per_task = False
    step_size = 0.025
    decay = 0.001

    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-8  # the logits' Adam, as in the paper's code

    def __init__(self, strategy):
        super().__init__(strategy)
        count = len(strategy.task_names)
        self.logits = tf.Variable(tf.zeros([count]), trainable=False, name="famo_logits")
        self.previous = tf.Variable(tf.zeros([count]), trainable=False, name="famo_previous_log_losses")
        self.started = tf.Variable(0.0, trainable=False, name="famo_started")
        self.moment_1 = tf.Variable(tf.zeros([count]), trainable=False, name="famo_adam_m")
        self.moment_2 = tf.Variable(tf.zeros([count]), trainable=False, name="famo_adam_v")
        self.updates = tf.Variable(0.0, trainable=False, name="famo_adam_t")
        self.state = [self.logits, self.previous, self.started, self.moment_1, self.moment_2, self.updates]

    def total(self, losses):
        stacked = tf.stack(losses) + 1e-8
        z = tf.stop_gradient(tf.nn.softmax(self.logits))
        c = tf.stop_gradient(tf.reduce_sum(z / stacked))
        return tf.reduce_sum(z * tf.math.log(stacked)) / c

    def after_step(self, losses):
        log_losses = tf.math.log(replica_mean(tf.stack(losses)) + 1e-8)
        delta = self.previous - log_losses
        z = tf.nn.softmax(self.logits)
        # the logits' gradient, then an Adam step (weight decay as L2, torch.optim.Adam's): a plain
        # gradient step of this size barely moves them, and the task with the smallest loss, whose
        # log-loss gradient is largest, takes over the shared layers (measured: SCR at chance in the
        # gc,ac,scr,vad set with plain steps)
        gradient = z * (delta - tf.reduce_sum(z * delta)) + self.decay * self.logits
        started = self.started > 0.0
        updates = self.updates + tf.cast(started, tf.float32)
        m = self.beta_1 * self.moment_1 + (1.0 - self.beta_1) * gradient
        v = self.beta_2 * self.moment_2 + (1.0 - self.beta_2) * gradient * gradient
        t = tf.maximum(updates, 1.0)
        step = self.step_size * (m / (1.0 - self.beta_1**t)) / (tf.sqrt(v / (1.0 - self.beta_2**t)) + self.epsilon)
        self.logits.assign(tf.where(started, self.logits - step, self.logits))
        self.moment_1.assign(tf.where(started, m, self.moment_1))
        self.moment_2.assign(tf.where(started, v, self.moment_2))
        self.updates.assign(updates)
        self.previous.assign(log_losses)
        self.started.assign(1.0)

    def log_weights(self):
        return tf.unstack(tf.nn.softmax(self.logits))


class UncertaintyWeighting(Balancer):
    per_task = False

    def __init__(self, strategy):
        super().__init__(strategy)
        self.variables = [tf.Variable(0.0, name=f"log_variance_{name}") for name in strategy.task_names]

    def total(self, losses):
        return uncertainty_loss(losses, self.variables)

    def log_weights(self):
        return [0.5 * tf.exp(-s) for s in self.variables]


BALANCERS = {
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "famo": FAMO,
}


def make_balancer(name: str | None, strategy) -> Balancer | None:
    """The balancer named ``name`` for ``strategy``, None for the loss-weighting methods (fixed, dwa, mfl)."""
    if name is None or name not in BALANCERS:
        return None
    if not strategy.sums_losses:
        raise ConfigError(f"--weighting {name} balances a sum of task losses; {type(strategy).__name__} has none")
    return BALANCERS[name](strategy)
