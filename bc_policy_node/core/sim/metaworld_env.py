"""Meta-World (v3) manipulation tasks and their scripted experts behind a small, seedable interface.

numpy + mujoco only; `metaworld` (MIT, `pip install metaworld==3.1.1`, which pins mujoco==3.3.0)
is imported lazily, so this module imports without it and raises `MetaWorldUnavailable` (with the
install command) only when a function needs it::

    env = MetaWorldEnv("pick-place-v3")          # or "metaworld/pick-place-v3"
    expert = env.expert()
    obs = env.reset(seed=3)                       # goal/object positions chosen from the seed
    while True:
        obs, success, done = env.step(expert(obs))
        if success or done:
            break

Tasks are discovered from the installed package, not listed here: `available_tasks()` is every
environment of metaworld's v3 registry that has a scripted `Sawyer<Task>V3Policy` class, matched
by normalised names (see `_match_policies`).

Observation (39,): [0:3] hand xyz, [3] gripper opening (0 closed .. 1 open), [4:18] up to two
objects as (xyz, quat) pairs (zero where a task has fewer), [18:36] the same 18 values of the
previous step, [36:39] goal xyz (the goal is observable, as in Meta-World's MT benchmarks).
Action (4,): end-effector delta xyz and gripper effort, each in [-1, 1] (clipped).

Seeding: `reset(seed)` first returns the simulation to the state it had right after
construction (a snapshot), then draws the task variation (metaworld's `_get_state_rand_vec`:
object/goal positions) from `np_random` seeded with `seed` (metaworld's own `seeded_rand_vec`
path). The same seed therefore gives the same initial state whatever ran before, in any
process. The variation for a seed is this module's own; it is not the n-th task of
`metaworld.MT1(name, seed=...)` (which draws 50 variations at once from the global numpy RNG).

State copies: `get_state()` returns a `MetaWorldState` holding everything the next steps depend
on (see `MetaWorldState`); `set_state(s)` followed by the same actions reproduces the original
continuation bit for bit. This is how chunk labels are made: roll the expert K steps ahead from
a copy, then restore.
"""
from __future__ import annotations

import copy
import difflib
import functools
import importlib
import pkgutil
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

OBS_DIM = 39
ACT_DIM = 4
PREFIX = "metaworld/"
INSTALL_HINT = "pip install metaworld==3.1.1  (it installs mujoco==3.3.0; metaworld does not work on mujoco 4)"

# Model arrays that metaworld's reset_model() rewrites (measured over all 50 v3 tasks: body_pos
# and site_pos; the quaternions and geom placement are included for safety, they are small).
_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "site_quat", "geom_pos", "geom_quat")
# env attributes that are not simulation state (handles, spaces, renderer)
_SKIP_ATTRS = frozenset({"model", "data", "mujoco_renderer", "spec", "_np_random_seed"})


class MetaWorldUnavailable(ImportError):
    """metaworld (or the mujoco version it needs) cannot be imported."""


class UnknownTaskError(ValueError):
    """A task name that is not one of `available_tasks()`."""


def _import_metaworld():
    try:
        mw = importlib.import_module("metaworld")
        importlib.import_module("metaworld.env_dict")
        importlib.import_module("metaworld.policies")
    except Exception as e:  # ImportError, or metaworld failing against an unsupported mujoco
        raise MetaWorldUnavailable(
            f"Meta-World tasks need the `metaworld` package, which could not be imported "
            f"({type(e).__name__}: {e}). Install it with: {INSTALL_HINT}") from e
    return mw


# ---------------------------------------------------------------- task discovery

def _camel_tokens(name: str) -> Tuple[str, ...]:
    return tuple(t.lower() for t in re.findall(r"[A-Z][a-z]*|[a-z]+|[0-9]+", name))


def _task_tokens(task: str) -> Tuple[Tuple[str, ...], int]:
    m = re.fullmatch(r"(.+)-v(\d+)", task)
    base, version = (m.group(1), int(m.group(2))) if m else (task, -1)
    return tuple(t for t in re.split(r"[-_]", base.lower()) if t), version


def _env_class_tokens(cls: type) -> Tuple[str, ...]:
    m = re.fullmatch(r"Sawyer(\w+?)(?:Env)?V\d+", cls.__name__)
    return _camel_tokens(m.group(1)) if m else ()


def _prefix_equal(a: Tuple[str, ...], b: Tuple[str, ...]) -> bool:
    """Same words, each one a prefix of the other ("insert" ~ "insertion")."""
    return len(a) == len(b) and all(x.startswith(y) or y.startswith(x) for x, y in zip(a, b))


def _registry(mw) -> Dict[str, type]:
    env_dict = mw.env_dict
    reg = getattr(env_dict, "ALL_V3_ENVIRONMENTS", None)
    if reg is None:  # a later metaworld: take the newest ALL_V<n>_ENVIRONMENTS
        found = sorted((int(m.group(1)), k) for k in dir(env_dict)
                       if (m := re.fullmatch(r"ALL_V(\d+)_ENVIRONMENTS", k)))
        if not found:
            raise MetaWorldUnavailable(f"metaworld {getattr(mw, '__version__', '?')} has no "
                                       f"ALL_V*_ENVIRONMENTS registry; install {INSTALL_HINT}")
        reg = getattr(env_dict, found[-1][1])
    return dict(reg)


def _policy_classes(mw) -> Dict[str, type]:
    """Every `Sawyer<Name>V<n>Policy` class of metaworld.policies (and its submodules)."""
    pol = mw.policies
    base = getattr(importlib.import_module("metaworld.policies.policy"), "Policy", object)
    modules = [pol]
    for info in pkgutil.iter_modules(pol.__path__):
        try:
            modules.append(importlib.import_module(f"{pol.__name__}.{info.name}"))
        except Exception:  # a broken optional submodule must not hide the others
            continue
    out: Dict[str, type] = {}
    for mod in modules:
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, base) and obj is not base
                    and re.fullmatch(r"Sawyer\w+V\d+Policy", name)):
                out[name] = obj
    return out


def _match_policies(registry: Dict[str, type], policies: Dict[str, type]) -> Dict[str, type]:
    """Pair each task with its scripted policy by normalised names, best match first:
    2 = the policy's words equal the task's words ("pick-place-v3" ~ SawyerPickPlaceV3Policy) or
    the env class's words (SawyerPegInsertionSideEnvV3 ~ SawyerPegInsertionSideV3Policy);
    1 = the same words up to prefixes ("peg-insert-side" ~ PegInsertionSide). The version must
    agree. A task whose best score is shared by two policies is left out (ambiguous)."""
    parsed = []
    for pname, pcls in policies.items():
        m = re.fullmatch(r"Sawyer(\w+?)V(\d+)Policy", pname)
        if m:
            parsed.append((_camel_tokens(m.group(1)), int(m.group(2)), pcls))
    out: Dict[str, type] = {}
    for task, ecls in registry.items():
        words, version = _task_tokens(task)
        cls_words = _env_class_tokens(ecls)
        scored = []
        for pwords, pversion, pcls in parsed:
            if version >= 0 and pversion != version:
                continue
            if pwords in (words, cls_words):
                scored.append((2, pcls))
            elif _prefix_equal(pwords, words) or (cls_words and _prefix_equal(pwords, cls_words)):
                scored.append((1, pcls))
        if not scored:
            continue
        best = max(s for s, _ in scored)
        top = {c for s, c in scored if s == best}
        if len(top) == 1:
            out[task] = top.pop()
    return out


@functools.lru_cache(maxsize=1)
def _discover() -> Tuple[Dict[str, type], Dict[str, type]]:
    mw = _import_metaworld()
    registry = _registry(mw)
    return registry, _match_policies(registry, _policy_classes(mw))


def available_tasks() -> List[str]:
    """Every Meta-World task name (e.g. "pick-place-v3") that has a scripted expert, sorted."""
    _, matched = _discover()
    return sorted(matched)


def resolve_task(task: str) -> str:
    """The canonical name of `task`: accepts "pick-place-v3", "metaworld/pick-place-v3" and,
    when unambiguous, "pick-place" (the newest version). Raises UnknownTaskError."""
    tasks = available_tasks()
    name = str(task).strip()
    if name.lower().startswith(PREFIX):
        name = name[len(PREFIX):]
    name = name.lower().replace("_", "-")
    if name in tasks:
        return name
    if not re.search(r"-v\d+$", name):
        versions = sorted((int(t.rsplit("-v", 1)[1]), t) for t in tasks if t.rsplit("-v", 1)[0] == name)
        if versions:
            return versions[-1][1]
    close = difflib.get_close_matches(name, tasks, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownTaskError(f"unknown Meta-World task {task!r}.{hint} "
                           f"Available ({len(tasks)}): {', '.join(tasks)}")


def expert_for(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """The task's scripted policy as obs (39,) -> action (4,) float32 in [-1, 1]."""
    _, matched = _discover()
    policy = matched[resolve_task(task)]()

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # the policies warn about their own gains ("Constant(s)...")
            warnings.simplefilter("ignore")
            a = policy.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(np.asarray(a, dtype=np.float32).reshape(ACT_DIM), -1.0, 1.0)

    act.policy = policy  # type: ignore[attr-defined]
    return act


# ---------------------------------------------------------------- state copies

@dataclass(frozen=True)
class MetaWorldState:
    """A complete copy of a `MetaWorldEnv`'s simulation.

    - `physics`: mujoco's integration state (`mj_getState(..., mjSTATE_INTEGRATION)`): time,
      qpos, qvel, act, qacc_warmstart, plugin state, ctrl, applied forces, eq_active,
      mocap_pos/mocap_quat, userdata;
    - `model`: the model arrays metaworld moves at reset (body/site/geom positions, e.g. the goal
      site and the object's body);
    - `env`: the metaworld env's own fields: the episode step counter (`curr_path_length`), the
      previous frame of the observation (`_prev_obs`), `_last_stable_obs`, target and initial
      positions (`_target_pos`, `obj_init_pos`, ...), the task variation (`_last_rand_vec`),
      `np_random`, and any task-specific field (deep copies of every plain attribute);
    - `wrapper`: this class's episode bookkeeping (last obs, seed, success so far).
    - `views`: the names (and values) of env attributes that are live views into mujoco's own
      arrays (metaworld keeps e.g. `init_left_pad = data.body("leftpad").xpos`): they stay views,
      and restoring `model` and `physics` (then `mj_forward`) restores what they show.
    """
    task: str
    physics: np.ndarray
    model: Dict[str, np.ndarray]
    env: Dict[str, Any]
    wrapper: Dict[str, Any] = field(default_factory=dict)
    views: Dict[str, np.ndarray] = field(default_factory=dict)


def _is_live_view(v: Any) -> bool:
    """An ndarray whose memory belongs to mujoco (MjModel/MjData), not to numpy."""
    if not isinstance(v, np.ndarray):
        return False
    b = v
    while isinstance(b.base, np.ndarray):
        b = b.base
    return b.base is not None


_PLAIN = (np.ndarray, np.generic, int, float, bool, str, bytes, type(None), np.random.Generator)


def _is_plain(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _is_plain(x) for k, x in v.items())
    return isinstance(v, _PLAIN)


# ---------------------------------------------------------------- the environment

class MetaWorldEnv:
    """One Meta-World task, seeded variation, scripted expert, exact state copies."""

    def __init__(self, task: str):
        import mujoco  # numpy + mujoco layer; metaworld below pulls mujoco in anyway
        self._mujoco = mujoco
        registry, matched = _discover()
        self.task = resolve_task(task)
        self.name = PREFIX + self.task
        env = registry[self.task]()
        # what metaworld's MT benchmarks and set_task() do, with a seeded variation instead of a
        # frozen one: goal observable, task "set", rand_vec drawn from env.np_random at reset
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal
        env.observation_space = env.sawyer_observation_space
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        self._env = env
        self._policy_cls = matched[self.task]
        self._state_spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._action_low = np.asarray(env.action_space.low, dtype=np.float32)
        self._action_high = np.asarray(env.action_space.high, dtype=np.float32)
        self._obs: Optional[np.ndarray] = None
        self._seed: Optional[int] = None
        self._succeeded = False
        self.last_reward = 0.0
        self.last_info: Dict[str, Any] = {}
        self._pristine = self.get_state()

    # -- episode

    @property
    def horizon(self) -> int:
        """Steps per episode (metaworld's max_path_length, 500)."""
        return int(self._env.max_path_length)

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return int(self._env.curr_path_length)

    @property
    def done(self) -> bool:
        return self._obs is not None and self.steps >= self.horizon

    @property
    def succeeded(self) -> bool:
        """Whether any step of the current episode reported success."""
        return self._succeeded

    @property
    def seed(self) -> Optional[int]:
        return self._seed

    @property
    def action_low(self) -> np.ndarray:
        return self._action_low.copy()

    @property
    def action_high(self) -> np.ndarray:
        return self._action_high.copy()

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode whose task variation (object/goal positions) is a function of `seed`
        alone; returns the observation (39,)."""
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._restore(self._pristine)
        env = self._env
        env.seed(int(seed))
        obs, _ = env.reset()
        self._obs = np.asarray(obs, dtype=np.float64).copy()
        self._seed = int(seed)
        self._succeeded = False
        self.last_reward, self.last_info = 0.0, {}
        return self._obs.copy()

    def step(self, action) -> Tuple[np.ndarray, bool, bool]:
        """Apply `action` (4,) (clipped to [-1, 1]) for one control step (5 physics steps).
        Returns (obs (39,), success at this step, done = horizon reached). A NaN/inf or
        wrongly sized action raises ValueError and leaves the env untouched."""
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"action must be {ACT_DIM} numbers (dx, dy, dz, gripper), got {action!r}") from e
        if a.shape != (ACT_DIM,):
            raise ValueError(f"action must have shape ({ACT_DIM},) (end-effector dx, dy, dz, gripper), "
                             f"got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()} (NaN/inf); the env was not stepped")
        if self._obs is None:
            raise RuntimeError("call reset(seed) before step()")
        if self.done:
            raise RuntimeError(f"the episode is over ({self.horizon} steps); call reset(seed)")
        a32 = np.clip(a.astype(np.float32), self._action_low, self._action_high)
        obs, reward, _terminated, _truncated, info = self._env.step(a32)
        self._obs = np.asarray(obs, dtype=np.float64).copy()
        success = bool(info.get("success", False))
        self._succeeded = self._succeeded or success
        self.last_reward, self.last_info = float(reward), dict(info)
        return self._obs.copy(), success, self.done

    # -- observation parts

    def observation(self) -> np.ndarray:
        return self._require_obs().copy()

    def ee_position(self) -> np.ndarray:
        """Hand (end-effector) xyz, obs[0:3]."""
        return self._require_obs()[0:3].copy()

    def gripper_opening(self) -> float:
        """Finger distance normalised to 0 (closed) .. 1 (open), obs[3]."""
        return float(self._require_obs()[3])

    def object_positions(self) -> np.ndarray:
        """(2, 3): xyz of the first and second object (obs[4:7], obs[11:14]); zeros where unused."""
        o = self._require_obs()
        return np.stack([o[4:7], o[11:14]]).copy()

    def goal(self) -> np.ndarray:
        """Goal xyz, obs[36:39]."""
        return self._require_obs()[36:39].copy()

    def _require_obs(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("call reset(seed) first")
        return self._obs

    # -- expert

    def expert(self) -> Callable[[np.ndarray], np.ndarray]:
        """The task's scripted policy: obs (39,) -> action (4,) float32."""
        return expert_for(self.task)

    def rollout_expert(self, seed: int, max_steps: Optional[int] = None,
                       stop_on_success: bool = True) -> Dict[str, Any]:
        """One expert episode: obs (T, 39) the observations acted on, act (T, 4), success (any
        step succeeded), steps T. Stops at the first success unless `stop_on_success` is False."""
        expert = self.expert()
        obs = self.reset(seed)
        limit = self.horizon if max_steps is None else min(int(max_steps), self.horizon)
        observations, actions = [], []
        success = False
        for _ in range(limit):
            a = expert(obs)
            observations.append(obs)
            actions.append(a)
            obs, ok, done = self.step(a)
            success = success or ok
            if (ok and stop_on_success) or done:
                break
        return {"obs": np.asarray(observations, dtype=np.float64).reshape(-1, OBS_DIM),
                "act": np.asarray(actions, dtype=np.float32).reshape(-1, ACT_DIM),
                "success": bool(success), "steps": len(actions)}

    # -- state copies

    def get_state(self) -> MetaWorldState:
        """A complete, independent copy of the simulation (see MetaWorldState)."""
        mj = self._mujoco
        m, d = self._env.model, self._env.data
        physics = np.empty(mj.mj_stateSize(m, self._state_spec), dtype=np.float64)
        mj.mj_getState(m, d, physics, self._state_spec)
        model = {f: getattr(m, f).copy() for f in _MODEL_FIELDS}
        env_fields = {k: v for k, v in vars(self._env).items()
                      if k not in _SKIP_ATTRS and not _is_live_view(v) and _is_plain(v)}
        wrapper = {"obs": None if self._obs is None else self._obs.copy(), "seed": self._seed,
                   "succeeded": self._succeeded, "last_reward": self.last_reward,
                   "last_info": self.last_info}
        views = {k: v.copy() for k, v in vars(self._env).items() if k not in _SKIP_ATTRS and _is_live_view(v)}
        return MetaWorldState(self.task, physics, model, copy.deepcopy(env_fields), copy.deepcopy(wrapper), views)

    def set_state(self, state: MetaWorldState) -> None:
        """Restore a copy made by get_state() of this task; the same actions then give exactly
        the same observations as after the copy was taken. `state` stays reusable."""
        if not isinstance(state, MetaWorldState):
            raise TypeError(f"set_state needs a MetaWorldState from get_state(), got {type(state).__name__}")
        if state.task != self.task:
            raise ValueError(f"state of task {state.task!r} cannot be restored into {self.task!r}")
        self._restore(state)

    def _restore(self, state: MetaWorldState) -> None:
        mj = self._mujoco
        env = self._env
        m, d = env.model, env.data
        if state.physics.shape != (mj.mj_stateSize(m, self._state_spec),):
            raise ValueError("state does not fit this model (physics vector size differs)")
        for f, arr in state.model.items():
            getattr(m, f)[...] = arr  # in place: live views into the model stay valid
        # fields set since the copy was taken (and not live views) did not exist then: drop them
        for k in [k for k, v in vars(env).items()
                  if k not in state.env and k not in state.views and k not in _SKIP_ATTRS
                  and not _is_live_view(v) and _is_plain(v)]:
            delattr(env, k)
        for k, v in copy.deepcopy(state.env).items():
            setattr(env, k, v)
        for k, v in state.views.items():  # were views into mujoco's arrays when copied
            if not _is_live_view(env.__dict__.get(k)):
                setattr(env, k, v.copy())  # cannot re-create the view: its value at copy time
        mj.mj_setState(m, d, state.physics, self._state_spec)
        mj.mj_forward(m, d)  # derived quantities (xpos, site_xpos, ...) that obs and rewards read
        # mj_forward's constraint solver rewrites qacc_warmstart (started from the restored one it
        # lands ~1e-14 away from the original's); the next step starts from it: restore it again
        mj.mj_setState(m, d, state.physics, self._state_spec)
        w = copy.deepcopy(state.wrapper)
        self._obs = w.get("obs")
        self._seed = w.get("seed")
        self._succeeded = bool(w.get("succeeded", False))
        self.last_reward = float(w.get("last_reward", 0.0))
        self.last_info = dict(w.get("last_info", {}))

    def close(self) -> None:
        try:
            self._env.close()
        except Exception:
            pass
