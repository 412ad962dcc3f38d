"""Training plumbing the trainers share: the flags that mean the same thing in every trainer, bad-input exits,
the network with its two adapters prepared for accelerate, the adapters' updates, atomic adapter-only
checkpoints, resuming, and the training loop's bookkeeping (logs, progress, checkpoint and validation
cadence, step times, outputs).

What is particular to a model family (its networks, noising, the AMD step's four stages, sampling and
outputs) stays in its trainer.
"""

import contextlib
import logging
import math
import os
import re
import shutil
import statistics
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state, save_accelerator_state
from accelerate.logging import get_logger
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    broadcast,
    is_bf16_available,
    set_seed,
)
from diffusers.optimization import get_scheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .hub import push_to_hub
from .lora import (
    ADAPTERS,
    FAKE,
    STUDENT,
    add_student_and_fake_adapters,
    load_lora_state_dict,
    lora_shapes,
    lora_state_dict,
    sharded_like,
    unsharded,
    use_adapter,
)
from .objective import OPERATORS
from .parameterization import sample_noise_levels

logger = get_logger(__name__)

REPORT_TO = ("tensorboard", "wandb", "all", "none")
CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # complete checkpoints; one being written is "tmp-checkpoint-N"
OPTIMIZER_FILES = ("optimizer.bin", "optimizer_1.bin")  # the student's and the fake's, named as accelerate names them
HEAD_FILE = "gan_head.safetensors"  # the GAN discriminator head, in checkpoints of runs with the GAN term


def add_amd_arguments(parser):
    group = parser.add_argument_group("AMD")
    group.add_argument(
        "--operator", default="amd", choices=OPERATORS, help="dmd (Eq. 7), naive (Eq. 8) or amd (Eq. 10)."
    )
    group.add_argument("--sensitivity", type=float, default=0.5, help="s of Eq. 13.")
    group.add_argument(
        "--sharpen",
        dest="sharpen",
        action="store_true",
        default=True,
        help="Repulsive landscape sharpening, W(a) = exp(-a) (Eq. 14; default).",
    )
    group.add_argument("--no_sharpen", dest="sharpen", action="store_false", help="Plain fake-teacher loss (W = 1).")
    group.add_argument("--group_size", type=int, default=4, help="K samples per prompt or class label (Eq. 12).")
    group.add_argument(
        "--fake_update_ratio", type=int, default=5, help="The student is updated every N-th step (DMD2: 5)."
    )
    group.add_argument(
        "--min_score_noise_level", type=float, default=0.02,
        help="Student samples are re-noised to noise levels in [min, max] (0 clean, 1 pure noise) to be scored.",
    )  # fmt: skip
    group.add_argument("--max_score_noise_level", type=float, default=0.98)


def add_optimization_arguments(parser):
    group = parser.add_argument_group("optimization")
    group.add_argument(
        "--train_batch_size", type=int, default=32, help="Samples per device and step: a multiple of --group_size."
    )
    group.add_argument("--max_train_steps", type=int, default=2000, help="Steps; each updates the fake teacher.")
    group.add_argument("--learning_rate", type=float, default=1e-4, help="Student adapter learning rate.")
    group.add_argument(
        "--fake_learning_rate", type=float, default=None, help="Fake adapter learning rate (default: --learning_rate)."
    )
    group.add_argument("--lr_scheduler", default="constant", help="diffusers' get_scheduler name.")
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=0.0)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="Stop after this many consecutive skipped updates of one adapter (non-finite loss or gradient).",
    )
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW.")
    group.add_argument("--lora_rank", type=int, default=32)
    group.add_argument("--lora_alpha", type=int, default=None, help="Default: --lora_rank.")
    group.add_argument(
        "--fake_lora_rank",
        type=int,
        default=None,
        help="Rank of the fake adapter (default: --lora_rank); both adapters use --lora_alpha.",
    )
    group.add_argument(
        "--mixed_precision",
        default=None,
        choices=["no", "bf16"],
        help="fp16 is not offered: its loss scaler would be shared by two optimizers.",
    )
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument(
        "--allow_tf32",
        action="store_true",
        help="TF32 matmuls on Ampere or newer GPUs: an fp32 reward model runs ~3x faster.",
    )
    group.add_argument("--seed", type=int, default=0)


def add_output_arguments(parser):
    group = parser.add_argument_group("outputs, logging, checkpoints")
    group.add_argument("--output_dir", default=None, help="Each trainer sets its own default.")
    group.add_argument("--logging_dir", default="logs", help="Under --output_dir.")
    group.add_argument("--report_to", default="tensorboard", choices=REPORT_TO)
    group.add_argument("--validation_steps", type=int, default=200)
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint-N folder, or 'latest' in --output_dir (a fresh start when there is none).",
    )
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", default=None)
    group.add_argument("--hub_token", default=None)


def check_shared_args(parser, args):
    """Reject bad values of the shared flags with argparse's one-sentence error (exit status 2), before
    anything is loaded or written."""
    if args.group_size < 2:
        parser.error(f"--group_size must be at least 2 to rank samples within a group, got {args.group_size}.")
    if args.train_batch_size % args.group_size != 0:
        parser.error(
            f"--train_batch_size {args.train_batch_size} is not a multiple of --group_size {args.group_size}: make "
            "it one."
        )
    for name in (
        "max_train_steps",
        "fake_update_ratio",
        "validation_steps",
        "checkpointing_steps",
        "lora_rank",
        "max_nonfinite_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.fake_lora_rank is not None and args.fake_lora_rank < 1:
        parser.error(f"--fake_lora_rank must be at least 1, got {args.fake_lora_rank}.")
    if not 0 <= args.min_score_noise_level <= args.max_score_noise_level <= 1:
        parser.error(
            "--min_score_noise_level and --max_score_noise_level need 0 <= min <= max <= 1 (0 clean, 1 noise)."
        )
    if args.sensitivity < 0:
        parser.error(f"--sensitivity must be >= 0 (s of Eq. 13), got {args.sensitivity}.")
    if args.reward == "none" and (args.operator != "dmd" or args.sharpen):
        parser.error("--reward none leaves no advantages to use: it goes with --operator dmd --no_sharpen only.")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is an existing file: give a folder.")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        parser.error(
            f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a folder: give a checkpoint-N folder, "
            "or 'latest'."
        )
    args.lora_alpha = args.lora_alpha or args.lora_rank  # peft's scale is alpha / rank


def score_noise_levels(args, batch_size, device, shift=None):
    """Noise levels (0 clean, 1 noise) at which the student's samples are scored, in [--min_score_noise_level,
    --max_score_noise_level]: uniform without a ``shift`` (DMD2), shifted and clamped with one (Self-Forcing; see
    :func:`amd_utils.parameterization.sample_noise_levels`)."""
    return sample_noise_levels(batch_size, args.min_score_noise_level, args.max_score_noise_level, shift, device=device)


def exit_bad_input(script, error):
    """A bad input found while setting up: one sentence as argparse writes it, exit status 2, nothing written."""
    sys.stderr.write(f"{script}: error: {error}\n")
    sys.exit(2)


def check_pipeline(path, components, family):
    """Raise one sentence unless the pipeline folder or Hub id ``path`` has ``components`` ({folder: class name}):
    catches a missing folder and a pipeline of another model family before its weights are loaded."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(path)
    except (OSError, ValueError):  # not on disk, not reachable, or not even a valid Hub id
        raise ValueError(
            f"cannot load {family} pipeline from {path!r}: give a local pipeline folder or a Hub id that is reachable."
        ) from None
    pipeline_class = index.get("_class_name", "pipeline")
    pipeline_class = pipeline_class[-1] if isinstance(pipeline_class, list) else pipeline_class  # custom: [file, class]
    for folder, class_name in components.items():
        found = (index.get(folder) or [None, None])[1]
        if found != class_name:
            raise ValueError(
                f"{path!r} is a {pipeline_class} whose {folder} is {found or 'missing'}, not {class_name}: give "
                f"{family} pipeline."
            )


def make_accelerator(args, allow_fsdp=False):
    """The ``Accelerator`` of a run, logging set up, each process seeded apart (its own prompts or labels
    and noise), TF32 on if asked; returns it with the dtype of the frozen weights. An FSDP launch is refused
    unless ``allow_fsdp`` (a trainer whose processes all run the same forwards)."""
    if args.mixed_precision == "bf16" and not is_bf16_available():
        raise ValueError(
            "--mixed_precision bf16 needs a device with bfloat16 support (an Ampere or newer GPU, or the CPU): use "
            "--mixed_precision no."
        )
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        # The student's backward leaves the fake adapter without grads and vice versa.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.distributed_type == DistributedType.FSDP:
        if not allow_fsdp:
            raise ValueError("FSDP is supported by train_amd_wan.py only: launch this trainer without an FSDP config.")
        plugin = accelerator.state.fsdp_plugin
        if not hasattr(plugin, "fsdp_version"):  # accelerate 1.6.0 brought FSDP2 and the config's fsdp_version
            import accelerate

            raise ValueError(
                f"the trainer runs under FSDP2, which needs accelerate >= 1.6 (this is {accelerate.__version__}): "
                "pip install -U 'accelerate>=1.6'."
            )
        if plugin.fsdp_version != 2:
            raise ValueError(
                "the trainer runs under FSDP2 only: set fsdp_version: 2 in the accelerate config, as "
                "examples/wan/accelerate_fsdp2.yaml does."
            )
        if args.use_8bit_adam:
            raise ValueError(
                "--use_8bit_adam does not work under FSDP (bitsandbytes cannot update sharded weights): drop it, "
                "FSDP already shards the optimizer states."
            )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(args.seed, device_specific=True)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator, torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32


def prepare_adapters(accelerator, network, target_modules, args, save_extra=None, head=None, student_network=None,
                     load_extra=None):  # fmt: skip
    """Freeze ``network``, add the ``student`` and ``fake`` adapters, turn on gradient checkpointing if asked,
    prepare it with accelerate together with both adapters' optimizers, and resume.

    Returns ``(network, model, updates, global_step)``: the prepared network for forwards whose gradient is
    synchronized across processes, the unwrapped ``model`` for passes without grad, the :class:`AdapterUpdates`
    and the step to start from. ``save_extra(folder, student_state_dict)`` adds a trainer's own files to every
    checkpoint, ``load_extra(folder, student_model)`` reads them back on resuming. A GAN discriminator ``head``
    (``amd_utils.gan``) trains with the fake adapter, as a parameter group of the fake's optimizer; it is prepared
    as a model of its own (``updates.head``) and checkpointed. A ``student_network`` (a student with a base of its
    own) carries the student adapter instead of ``network``; ``updates.networks`` and ``updates.models`` then hold
    each adapter's prepared and unwrapped network."""
    students = [] if student_network is None else [student_network]
    for module in [network, *students]:
        module.to(accelerator.device).eval()  # eval: no dropout (DiT's label dropout included)
    adapter_params = add_student_and_fake_adapters(
        network, target_modules, args.lora_rank, args.lora_alpha, args.fake_lora_rank, student_network
    )
    for param in adapter_params[STUDENT] + adapter_params[FAKE]:
        # Every process starts from the main process's random lora_A: DDP copies it when it wraps, FSDP would not.
        param.data = broadcast(param.data)
    if args.gradient_checkpointing:
        for module in [network, *students]:
            module.enable_gradient_checkpointing()
    heads = []
    if head is not None:
        heads = [head.to(accelerator.device)]  # DDP copies the main process's initial head when it wraps
        adapter_params[FAKE] = [{"params": adapter_params[FAKE]}, {"params": list(head.parameters())}]
    optimizers, lr_schedulers = make_optimizers(args, adapter_params, accelerator.num_processes)
    # One call: under FSDP accelerate shards the network and points the optimizers at the shards.
    network, *prepared = accelerator.prepare(network, *students, *optimizers.values(), *lr_schedulers.values(), *heads)
    students, prepared = prepared[: len(students)], prepared[len(students) :]
    # Under DDP, passes without grad skip the wrapper: they need no gradient sync, and their number may differ
    # between processes (backward simulation), which the wrapper's per-forward collectives cannot take. (FSDP
    # does not wrap: its forwards gather the weights, so every process must run the same passes.)
    model = accelerator.unwrap_model(network)
    networks = {STUDENT: students[0] if students else network, FAKE: network}
    updates = AdapterUpdates(
        accelerator, networks, dict(zip(ADAPTERS, prepared[:2])), dict(zip(ADAPTERS, prepared[2:4])), args,
        save_extra, prepared[4] if heads else None, load_extra,
    )  # fmt: skip
    return network, model, updates, resume(accelerator, args, updates)


def make_optimizers(args, adapter_params, num_processes):
    """AdamW (or 8-bit AdamW) and a learning-rate schedule for each adapter: the fake adapter steps every
    step, the student every ``fake_update_ratio``-th."""
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError(
                "--use_8bit_adam needs bitsandbytes: pip install bitsandbytes, or drop the flag."
            ) from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizers, lr_schedulers = {}, {}
    for name, lr, num_updates in (
        (STUDENT, args.learning_rate, math.ceil(args.max_train_steps / args.fake_update_ratio)),
        (FAKE, args.fake_learning_rate or args.learning_rate, args.max_train_steps),
    ):
        optimizers[name] = optimizer_class(
            adapter_params[name], lr=lr, betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        )  # fmt: skip
        # accelerate steps a prepared scheduler once per process at every optimizer step
        lr_schedulers[name] = get_scheduler(
            args.lr_scheduler, optimizers[name], num_warmup_steps=args.lr_warmup_steps * num_processes,
            num_training_steps=num_updates * num_processes,
        )  # fmt: skip
    return optimizers, lr_schedulers


class AdapterUpdates:
    """Both adapters' optimizers and learning-rate schedules (prepared by ``accelerator``), the one way a
    trainer updates an adapter (:meth:`step`), and their checkpoints (:meth:`save`, :meth:`load`). ``networks``
    maps each adapter to the prepared network that carries it (one network for both, or a student of its own);
    ``models`` to the unwrapped one."""

    def __init__(self, accelerator, networks, optimizers, lr_schedulers, args, save_extra=None, head=None,
                 load_extra=None):  # fmt: skip
        self.accelerator, self.args, self.save_extra, self.load_extra = accelerator, args, save_extra, load_extra
        self.networks = networks
        self.models = {name: accelerator.unwrap_model(network) for name, network in networks.items()}
        self.head = head  # the GAN discriminator head, prepared (None without the GAN term)
        self.optimizers, self.lr_schedulers = optimizers, lr_schedulers
        # The parameters the optimizers hold: under FSDP the shards that replaced the adapters' weights.
        self.params = {
            name: [p for group in opt.param_groups for p in group["params"]] for name, opt in optimizers.items()
        }
        self.skipped = dict.fromkeys(ADAPTERS, 0)  # updates skipped over the run ...
        self.skipped_in_a_row = dict.fromkeys(ADAPTERS, 0)  # ... and since the last one taken

    def step(self, name, losses, global_step):
        """Backward ``losses`` into adapter ``name``, clip, and step its optimizer and schedule. ``losses`` is one
        loss, or an iterable of microbatch losses that sum to it: each is backpropagated as soon as it is made,
        so one microbatch's graph is alive at a time and the gradients add up. A non-finite loss (on any
        process) or gradient norm skips the update, leaving weights and optimizer state untouched, and
        ``--max_nonfinite_steps`` skips in a row stop the run. Returns the step's logs for this adapter."""
        loss = 0.0
        for microbatch_loss in [losses] if torch.is_tensor(losses) else losses:
            # Gradient checkpointing recomputes the checkpointed blocks of the forward inside backward(), through
            # whichever adapter is active then; the trainers switch adapters between a forward and its backward
            # (real teacher, fake), so activate the one whose loss this is, or its gradient is another one's.
            use_adapter(self.models[name], name)
            self.accelerator.backward(microbatch_loss)
            loss = loss + microbatch_loss.detach().float()
        grad_norm = self.accelerator.clip_grad_norm_(self.params[name], self.args.max_grad_norm)
        loss_sum = self.accelerator.reduce(loss, "sum")  # the same verdict on every process
        if torch.isfinite(grad_norm) and torch.isfinite(loss_sum):
            self.optimizers[name].step()
            self.lr_schedulers[name].step()
            self.skipped_in_a_row[name] = 0
        else:
            self.skipped[name] += 1
            self.skipped_in_a_row[name] += 1
        self.optimizers[name].zero_grad(set_to_none=True)
        if self.skipped_in_a_row[name] >= self.args.max_nonfinite_steps:
            found = checkpoints(self.args.output_dir)
            last = os.path.join(self.args.output_dir, found[-1]) if found else "none was saved"
            raise SystemExit(
                f"stopped at step {global_step + 1}: the {name} adapter's loss or gradient was not finite for "
                f"{self.skipped_in_a_row[name]} updates in a row (--max_nonfinite_steps); the last good checkpoint: "
                f"{last}."
            )
        return {
            f"loss/{name}": loss.detach().item(),
            f"grad_norm/{name}": grad_norm.item(),
            f"skipped/{name}": self.skipped[name],
        }

    def save(self, folder):
        """Into ``folder``: both adapters (``student_lora.safetensors``, ``fake_lora.safetensors``), their
        optimizers' and schedules' states (in accelerate's file names), each process's random state, the GAN head
        if any (``gan_head.safetensors``; the trainers that have one do not run under FSDP), and ``save_extra``'s
        files. Sharded weights and states (FSDP) are gathered first: every process calls this.

        Not ``accelerator.save_state`` with hooks, as diffusers' examples do: under FSDP it writes the whole
        frozen base and pairs the i-th optimizer with the i-th model, and there are two optimizers to one model."""
        adapters = {name: lora_state_dict(self.models[name], name) for name in ADAPTERS}
        optimizer_states = [optimizer_state(self.optimizers[name]) for name in ADAPTERS]
        if self.accelerator.is_main_process:
            for name in ADAPTERS:
                save_file(adapters[name], os.path.join(folder, f"{name}_lora.safetensors"))
            for file_name, state in zip(OPTIMIZER_FILES, optimizer_states):
                torch.save(state, os.path.join(folder, file_name))
            if self.save_extra is not None:
                self.save_extra(folder, adapters[STUDENT])
            if self.head is not None:
                save_file(self.accelerator.unwrap_model(self.head).state_dict(), os.path.join(folder, HEAD_FILE))
        schedulers = [self.lr_schedulers[name] for name in ADAPTERS]
        save_accelerator_state(folder, [], [], schedulers, [], self.accelerator.process_index, self.accelerator.step)

    def load(self, folder):
        """Load what :meth:`save` wrote (under FSDP each process keeps its shards of it)."""
        for name, file_name in zip(ADAPTERS, OPTIMIZER_FILES):
            load_lora_state_dict(self.models[name], name, load_file(os.path.join(folder, f"{name}_lora.safetensors")))
            state = torch.load(os.path.join(folder, file_name), map_location="cpu", weights_only=True)
            load_optimizer_state(self.optimizers[name], self.params[name], state)
        if self.head is not None:
            self.accelerator.unwrap_model(self.head).load_state_dict(load_file(os.path.join(folder, HEAD_FILE)))
        if self.load_extra is not None:
            self.load_extra(folder, self.models[STUDENT])
        schedulers = [self.lr_schedulers[name] for name in ADAPTERS]
        load_accelerator_state(folder, [], [], schedulers, [], self.accelerator.process_index)


def optimizer_state(optimizer):
    """``optimizer.state_dict()`` with whole tensors on the CPU: gathered from every process when FSDP shards
    them, one at a time (the whole Adam states of the 14B's adapters are ~5 GiB)."""
    state = optimizer.state_dict()  # its per-weight dicts are the optimizer's own: build new ones
    state["state"] = {
        index: {k: unsharded(v).cpu() if torch.is_tensor(v) else v for k, v in param_state.items()}
        for index, param_state in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer, params, state):
    """Load :func:`optimizer_state`'s output, each per-weight tensor cut as its weight in ``params`` is cut."""
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == params[index].shape:
                param_state[key] = sharded_like(value, params[index])
    optimizer.load_state_dict(state)


def checkpoints(output_dir):
    """The complete ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    found = [d for d in os.listdir(output_dir) if CHECKPOINT.fullmatch(d)] if os.path.isdir(output_dir) else []
    return sorted(found, key=lambda d: int(CHECKPOINT.fullmatch(d)[1]))


def check_adapters_fit(models, path):
    """Raise one sentence when the adapters saved in checkpoint ``path`` do not have the keys and shapes of
    ``models``' (``{adapter: network}``; another --lora_rank, --fake_lora_rank or target modules)."""
    for name in ADAPTERS:
        expected = lora_shapes(models[name], name)
        with safe_open(os.path.join(path, f"{name}_lora.safetensors"), "pt") as f:
            saved = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        if saved.keys() != expected.keys():
            raise ValueError(
                f"the {name} adapter in {path} targets other modules than this trainer's: resume it with the code "
                "that wrote it, or start a new run."
            )
        if saved != expected:
            ranks = {shape[0] for key, shape in saved.items() if "lora_A" in key} - {
                shape[0] for key, shape in expected.items() if "lora_A" in key
            }
            rank_flag = "--lora_rank" if name == STUDENT else "--fake_lora_rank"
            raise ValueError(
                f"the {name} adapter in {path} has rank {sorted(ranks)[0] if ranks else '?'}: resume with the "
                f"{rank_flag} it was trained with."
            )


def resume(accelerator, args, updates):
    """Load ``--resume_from_checkpoint`` (a folder, or 'latest' complete one in ``--output_dir``) into the
    adapters, their optimizers and schedules, and the random state; return its step, 0 when there is none."""
    if not args.resume_from_checkpoint:
        return 0
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(args.output_dir)
        if not found:
            accelerator.print(f"No checkpoint in {args.output_dir!r}: starting a new run.")
            return 0
        path = os.path.join(args.output_dir, found[-1])
    else:
        path = args.resume_from_checkpoint
    name = os.path.basename(os.path.normpath(path))
    if not CHECKPOINT.fullmatch(name) or not os.path.isfile(os.path.join(path, f"{STUDENT}_lora.safetensors")):
        raise ValueError(f"{path!r} is not a complete checkpoint-N folder written by this trainer.")
    check_adapters_fit(updates.models, path)
    if os.path.isfile(os.path.join(path, HEAD_FILE)) != (updates.head is not None):
        trained, now = ("with", "without") if updates.head is None else ("without", "with")
        raise ValueError(
            f"{path} was trained {trained} the GAN term and this run is {now} it: resume it with the "
            "--gan_loss_weight and --fake_gan_loss_weight it was trained with, or start a new run."
        )
    accelerator.print(f"Resuming from {path}")
    updates.load(path)
    return int(CHECKPOINT.fullmatch(name)[1])


def save_checkpoint(accelerator, args, updates, global_step):
    """``<output_dir>/checkpoint-<step>``, written whole or not at all: every process writes into
    ``tmp-checkpoint-<step>``, which is renamed once complete; only then are the oldest beyond
    ``--checkpoints_total_limit`` deleted. A run killed while saving leaves a tmp folder that 'latest' ignores."""
    path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    partial = os.path.join(args.output_dir, f"tmp-checkpoint-{global_step}")
    if accelerator.is_main_process:
        if os.path.isdir(partial):
            shutil.rmtree(partial)  # left by a run killed while saving this step
        os.makedirs(partial)
    accelerator.wait_for_everyone()
    updates.save(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(path):
            shutil.rmtree(path)  # an older run's checkpoint of the same step
        os.replace(partial, path)
        found = checkpoints(args.output_dir)
        if args.checkpoints_total_limit is not None:
            for old in found[: max(0, len(found) - args.checkpoints_total_limit)]:
                shutil.rmtree(os.path.join(args.output_dir, old))
    accelerator.wait_for_everyone()
    return path


def step_logs(rewards, advantages, lr_schedulers):
    """What every step logs besides the adapters' losses and gradient norms; no reward logs without a reward."""
    logs = {"lr/student": lr_schedulers[STUDENT].get_last_lr()[0], "lr/fake": lr_schedulers[FAKE].get_last_lr()[0]}
    if rewards is not None:
        finite = rewards[torch.isfinite(rewards)]
        logs.update({
            "reward/mean": finite.mean().item() if len(finite) else float("nan"),
            "reward/std": finite.std().item() if len(finite) > 1 else float("nan"),
            "reward/nonfinite": len(rewards) - len(finite),  # samples given advantage 0
            "advantage/negative_share": (advantages < 0).float().mean().item(),  # the detected "forbidden zone"
        })  # fmt: skip
    return logs


def step_time_report(step_seconds, device):
    """'0.123 s with a student update, 0.045 s fake update only': medians of each kind of step after its
    first, which warms up (kept when it is the only one), plus peak memory on CUDA."""
    report = ", ".join(
        f"{statistics.median(seconds[1:] or seconds):.3f} s {kind}" for kind, seconds in step_seconds.items() if seconds
    )
    if device.type == "cuda":
        report += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return report


@contextlib.contextmanager
def random_stream_kept(accelerator):
    """What runs inside leaves the training's random stream where it was. The trainers load their models inside:
    transformers 4.48 draws random initial weights before it reads a checkpoint (the DINOv2 reward's, for one) and
    transformers 5 does not, so the training's draws, and the adapters trained with the same seed, would depend on
    its version."""
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def validation_rng(accelerator, seed):
    """Seed validation sampling with ``seed`` without shifting the training's random stream."""
    with random_stream_kept(accelerator):
        torch.manual_seed(seed)
        yield


def latest_validation(output_dir):
    """``["validation/<file>"]`` for the last step's validation sample in ``output_dir``, or ``[]``."""
    folder, pattern = os.path.join(output_dir, "validation"), re.compile(r"step-(\d+)\.\w+")
    found = [f for f in os.listdir(folder) if pattern.fullmatch(f)] if os.path.isdir(folder) else []
    return [f"validation/{max(found, key=lambda f: int(pattern.fullmatch(f)[1]))}"] if found else []


class TrainingLoop:
    """Algorithm 1's outer loop without its body. Iterating yields ``(global_step, student_turn)`` up to
    ``--max_train_steps``; the body runs the AMD step and ends with :meth:`end_step`, which logs, advances
    the progress bar, checkpoints and calls ``validate(step)`` (on every process) at their cadences.
    :meth:`finish` reports the step times and writes the outputs."""

    def __init__(self, accelerator, args, updates, global_step, project, validate):
        if accelerator.is_main_process:
            accelerator.init_trackers(project, config={k: str(v) for k, v in vars(args).items()})
        self.accelerator, self.args, self.updates, self.global_step, self.validate = (
            accelerator,
            args,
            updates,
            global_step,
            validate,
        )
        self.progress_bar = tqdm(
            range(args.max_train_steps),
            initial=global_step,
            desc="Steps",
            disable=not accelerator.is_local_main_process,
        )
        self.step_seconds = {"with a student update": [], "fake update only": []}  # wall time of each step

    def __iter__(self):
        while self.global_step < self.args.max_train_steps:
            self.step_start = time.perf_counter()
            self.student_turn = self.global_step % self.args.fake_update_ratio == 0
            yield self.global_step, self.student_turn

    def end_step(self, logs, rewards, advantages):
        """Close the step: ``logs`` (the adapters' updates) plus :func:`step_logs` to the trackers and the
        progress bar, its wall time, then a checkpoint and validation when due."""
        self.global_step += 1
        self.progress_bar.update(1)
        logs.update(step_logs(rewards, advantages, self.updates.lr_schedulers))
        kind = "with a student update" if self.student_turn else "fake update only"
        self.step_seconds[kind].append(time.perf_counter() - self.step_start)  # the .item() calls synchronized
        self.progress_bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.startswith(("loss", "reward/mean"))})
        self.accelerator.log(logs, step=self.global_step)
        if self.global_step % self.args.checkpointing_steps == 0:
            logger.info(
                f"Saved state to {save_checkpoint(self.accelerator, self.args, self.updates, self.global_step)}"
            )
        last = self.global_step == self.args.max_train_steps
        if self.global_step % self.args.validation_steps == 0 or last:
            self.validate(self.global_step)  # on every process (FSDP's forwards need them all); the main one writes

    def finish(self, save_outputs):
        """Log the median step times, call ``save_outputs(student_state_dict)`` on the main process (the
        student adapter gathered from every process under FSDP), push to the Hub if asked."""
        accelerator, args = self.accelerator, self.args
        logger.info(
            f"Median step time: {step_time_report(self.step_seconds, accelerator.device)}", main_process_only=False
        )
        accelerator.wait_for_everyone()
        student = lora_state_dict(self.updates.models[STUDENT], STUDENT)
        if accelerator.is_main_process:
            save_outputs(student)
            if args.push_to_hub:
                repo_id = push_to_hub(
                    args.output_dir, args.hub_model_id or os.path.basename(args.output_dir), args.hub_token
                )
                logger.info(f"Pushed to https://huggingface.co/{repo_id}")
        accelerator.end_training()
