"""Typed configs: the schema every Hydra config in conf/ is validated against before any heavy work.

Each dataclass mirrors one conf group; `register_configs()` puts them in Hydra's ConfigStore so that a typo in a key
or a wrong type fails at start-up with the key's name, not deep inside a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from vlmtune.errors import ConfigError


class Choice(str, Enum):
    """An option with a fixed set of values: OmegaConf refuses any other when the config is composed, listing the
    valid ones. Members are their own strings (`mode == "lora"`, f-strings, JSON, dict keys)."""

    __str__ = str.__str__
    __format__ = str.__format__


def choices(name: str, *values: str) -> type[Choice]:
    return Choice(name, {value: value for value in values})  # member name == value: what users type


PartMode = choices("PartMode", "frozen", "full", "lora", "qlora")
Precision = choices("Precision", "auto", "fp32", "bf16", "fp16")
OnError = choices("OnError", "raise", "skip")
Truncation = choices("Truncation", "drop_turns", "drop_sample")
VerifyImages = choices("VerifyImages", "header", "full")
MixtureStop = choices("MixtureStop", "first_exhausted", "all_exhausted")
SelectStrategy = choices("SelectStrategy", "default", "full", "patches")
ImagePolicy = choices("ImagePolicy", "resize", "pad")
Dtype = choices("Dtype", "float32", "bfloat16", "float16")
QuantType = choices("QuantType", "nf4", "fp4")
ImagePosition = choices("ImagePosition", "before", "after")
LoggerBackend = choices("LoggerBackend", "wandb", "none")
LoggerMode = choices("LoggerMode", "online", "offline", "disabled")
DataAction = choices("DataAction", "inspect", "check")
Color = choices("Color", "auto", "always", "never")
Split = choices("Split", "train", "test")
Negatives = choices("Negatives", "none", "swap")
Modality = choices("Modality", "image", "text")
# transformers' SchedulerType values (tests/test_units.py keeps them in step with the installed transformers).
Scheduler = choices("Scheduler", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
                    "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy")


@dataclass
class VisionConfig:
    # HF hub id or local directory of a vision encoder checkpoint (CLIP, SigLIP, DINOv2, ...); null with model.path
    path: str | None = MISSING
    # Hidden layer(s) whose features feed the projector: an int (-1 = last) or a list whose features are concatenated.
    feature_layer: Any = -2
    # Which tokens of the encoder go on: "default" drops the first (CLS) token, "full" keeps every token, "patches"
    # keeps only patch tokens (drops CLS and register tokens, e.g. DINOv2 with registers).
    select_strategy: SelectStrategy = SelectStrategy["default"]
    image_policy: ImagePolicy = ImagePolicy["resize"]  # resize: the processor's own resizing | pad: to a square first


@dataclass
class LLMConfig:
    path: str | None = MISSING  # HF hub id or local directory of a causal language model; null with model.path
    tokenizer: str | None = None  # tokenizer location when it differs from `path`
    pad_token: str | None = None  # an existing token to pad with when the tokenizer has none; None adds "<pad>"
    # The chat format this LLM was instruction-tuned with (a vlmtune.templates key): what model.template=auto uses.
    template: str = "chatml"


@dataclass
class ProjectorConfig:
    name: str = "mlp2x_gelu"  # key in vlmtune.model.projectors.PROJECTORS (conf/model/projector/<name>.yaml)
    depth: int = 2  # mlp: number of linear layers
    activation: str = "gelu"  # mlp / pixel_shuffle: activation between linear layers (a transformers ACT2FN key)
    scale: int = 2  # pixel_shuffle / conv: merge scale x scale neighbouring patches into one token
    num_queries: int = 64  # resampler / qformer: learned query tokens, i.e. image tokens per image
    num_layers: int = 2  # resampler / qformer / conv: attention (or residual conv) blocks
    num_heads: int = 8  # resampler / qformer: attention heads (must divide the LLM hidden size)


@dataclass
class ModelConfig:
    # An existing HF VLM (AutoModelForImageTextToText) to start from instead of composing parts: `model=hf_vlm`.
    path: str | None = None
    vision: VisionConfig = field(default_factory=VisionConfig)  # the vision encoder (composed models)
    llm: LLMConfig = field(default_factory=LLMConfig)  # the language model (composed models)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)  # maps vision features into the LLM
    # The chat template written into the processor: a vlmtune.templates key (conf/template/<key>.yaml), `native`
    # (the tokenizer's own) or `auto`: the LLM's format (model.llm.template) when composing, the architecture's
    # when starting from an HF VLM.
    template: str = "auto"
    dtype: Dtype = Dtype["float32"]  # weights dtype when loading: float32 | bfloat16 | float16


@dataclass
class DataConfig:
    train: str | None = None  # training data: a .json / .jsonl / .parquet file, a datasets folder or a datasets hub id
    test: str | None = None  # held-out data for evaluation, in the same forms
    # Weighted mixture for training instead of `train`: [{path, weight, format?, split?, image_root?}, ...].
    mixture: list[dict[str, Any]] = field(default_factory=list)
    mixture_seed: int = 0  # seeds the interleaving of the mixture's sources
    mixture_stop: MixtureStop = MixtureStop["first_exhausted"]  # first_exhausted | all_exhausted (oversample smaller)
    # Training: stream the data (never held in memory; needs optim.max_steps; see vlmtune/data/streaming.py).
    # Test split: read datasets sources lazily (with max_test_samples, only that many rows are read).
    streaming: bool = False
    format: str = "auto"  # llava | sharegpt | messages | vqa | auto (by each record's keys); see data/formats.py
    split: str = "train"  # split of `train` when it is a datasets folder or hub id
    test_split: str = "test"  # split of `test` when it is a datasets folder or hub id
    image_root: str | None = None  # folder that relative image paths start from (default: the data file's folder)
    on_error: OnError = OnError["raise"]  # a bad sample: raise (stop, naming file and sample) | skip (count it)
    verify_images: VerifyImages = VerifyImages["header"]  # check images up front: header (exists, size) | full
    max_image_pixels: int = 89_478_485  # larger images are refused as decompression bombs (PIL's default limit)
    max_length: int | None = None  # tokens per sample, image tokens included; None = no limit
    truncation: Truncation = Truncation["drop_turns"]  # over max_length: drop_turns | drop_sample; never mid-image
    cache_dir: str | None = None  # measured lengths are cached here by datasets fingerprints (None: not cached)
    packing: bool = False  # each batch as one padding-free row (positions restart per sample; see packing.py)
    # Length-grouped batches (vlmtune/data/batching.py): samples sorted by length within groups of `length_group`
    # batches, drawn anew each epoch (needs every sample's length before training: in-memory data). Off by default:
    # each step then trains samples of one length, on the demo's data one question kind, and its accuracy fell from
    # 0.920 to 0.648. optim.microbatch_by_length saves the padding's compute without changing the batches.
    group_by_length: bool = False
    length_group: int = 16  # batches per length group: more = less padding, fewer = more mixed batches
    # Dataloader processes that decode and process images off the training loop: None = 4 on a GPU, 0 on a CPU
    # (there they would take cores from the compute) and for streams (whose order they would change).
    workers: int | None = None
    blank_images: bool = False  # replace every image by a blank one: the blind baseline (train and test)
    max_train_samples: int | None = None  # use only the first N training samples
    max_test_samples: int | None = None  # evaluate only the first N test samples


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # fraction of steps spent warming the learning rate up
    scheduler: Scheduler = Scheduler["cosine"]  # transformers learning-rate scheduler
    epochs: float = 1.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = -1  # stop after this many optimizer steps (-1: run `epochs`)
    batch_size: int = 8  # samples per device per step
    grad_accum: int = 1  # gradient accumulation steps
    max_grad_norm: float = 1.0  # gradient clipping
    precision: Precision = Precision["auto"]  # auto (bf16 on GPUs that support it, else fp32) | fp32 | bf16 | fp16
    # The LM head and the loss only at supervised positions, in vocabulary chunks (vlmtune/train/supervised_head.py);
    # false = at every position, as TRL does on CPUs.
    supervised_head: bool = True
    # Liger's Triton kernels (RMSNorm, RoPE, SwiGLU; TRL keeps its own LM head): None = when liger-kernel is installed
    # and training on a CUDA GPU.
    liger_kernel: bool | None = None
    # Run each step's batch as micro-batches of similar length, each padded to its own longest sample: the same
    # samples, loss and gradient, less compute on padding (vlmtune/train/microbatches.py; sft). None = on a CPU,
    # where padding costs what tokens cost; off on a GPU (small micro-batches leave it idle), DeepSpeed and FSDP.
    microbatch_by_length: bool | None = None
    torch_compile: bool = False  # torch.compile the model (the Trainer's torch_compile): GPUs; compiling takes minutes


@dataclass
class PartPolicy:
    mode: PartMode = PartMode["frozen"]  # frozen | full | lora | qlora (qlora: the LLM only, loaded in 4-bit)
    lr: float | None = None  # this part's learning rate; None = optim.lr
    weight_decay: float | None = None  # this part's AdamW weight decay; None = optim.weight_decay
    gradient_checkpointing: bool = False  # recompute this part's activations in the backward pass: less memory
    lora_r: int | None = None  # lora mode: this part's LoRA rank; None = peft.r
    lora_alpha: int | None = None  # lora mode: this part's LoRA alpha; None = peft.alpha
    lora_dropout: float | None = None  # lora mode: this part's LoRA dropout; None = peft.dropout
    use_rslora: bool | None = None  # lora mode: scale this part by alpha / sqrt(r), not alpha / r; None = peft's
    use_dora: bool | None = None  # lora mode: DoRA (weight-decomposed LoRA) for this part; None = peft.use_dora


@dataclass
class PolicyConfig:
    """What trains, part by part: checked at start, printed as a table, per-part rates as optimizer groups."""

    vision: PartPolicy = field(default_factory=lambda: PartPolicy(mode=PartMode["frozen"]))  # the vision encoder
    projector: PartPolicy = field(default_factory=lambda: PartPolicy(mode=PartMode["full"]))  # the projector
    llm: PartPolicy = field(default_factory=lambda: PartPolicy(mode=PartMode["lora"]))  # the language model, lm_head

    MODES = {"vision": ("frozen", "full", "lora"), "projector": ("frozen", "full"),
             "llm": ("frozen", "full", "lora", "qlora")}  # what each part can be

    def __post_init__(self) -> None:
        for part, valid in self.MODES.items():
            mode = getattr(self, part).mode
            if mode not in valid:
                raise ConfigError(f"policy.{part}.mode={mode}: expected one of {', '.join(valid)}")
        if all(getattr(self, part).mode == "frozen" for part in self.MODES):
            raise ConfigError("nothing would train: policy.vision, policy.projector and policy.llm are all frozen")


@dataclass
class PeftConfig:
    """LoRA settings for every part whose policy mode is lora / qlora; policy.<part>.lora_r / lora_alpha /
    lora_dropout / use_rslora / use_dora override them for that part."""

    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA alpha (scale = alpha / r; alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # LoRA dropout
    use_dora: bool = False  # DoRA: weight-decomposed LoRA
    use_rslora: bool = False  # rank-stabilised LoRA scaling
    # Full-path regexes, because a bare name list would also hit the other parts' attention. `{llm}` / `{vision}`
    # stand for the architecture's module paths (model.language_model, Idefics3's model.text_model, ...); the LLM
    # names cover Llama/Qwen/Mistral/Gemma (q_proj, ..., down_proj) and Phi-3's fused qkv_proj / gate_up_proj.
    target: str = r"{llm}\..*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|gate_up_proj|down_proj)"
    vision_target: str = r"{vision}\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2|query|key|value)"  # policy.vision=lora
    quant_type: QuantType = QuantType["nf4"]  # qlora: 4-bit weight type, nf4 | fp4
    double_quant: bool = True  # qlora: quantize the quantization constants too
    compute_dtype: Dtype = Dtype["float32"]  # qlora: dtype of the de-quantized matmuls (bfloat16 on GPUs)


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend["wandb"]  # wandb | none
    project: str = "vlmtune"  # W&B project
    entity: str | None = None  # W&B entity (team or user); None = the API key's default
    mode: LoggerMode | None = None  # online | offline | disabled; None: online with WANDB_API_KEY set, else offline
    tags: list[str] = field(default_factory=list)  # extra W&B tags
    log_samples: int = 16  # evaluation samples (with images) logged as a W&B table
    log_checkpoint: bool = False  # log the final checkpoint as a W&B artifact (type "model"; files referenced in place)


@dataclass
class TaskMetricConfig:
    """One entry of a task's metric_list (lmms-eval's `{metric, aggregation, higher_is_better, **kwargs}`)."""

    metric: str = MISSING  # per-sample scorer: a key of vlmtune.eval.scoring.SCORERS (vqa_accuracy, anls, ...)
    aggregation: str = "mean"  # per-sample values -> the task's numbers: a key of vlmtune.eval.scoring.AGGREGATIONS
    name: str | None = None  # the reported metric name; None = `metric`
    higher_is_better: bool = True  # direction, for tables and sweeps
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to scorer and aggregation, e.g. {mode: canonical}


@dataclass
class TaskGenerationConfig:
    """Greedy decoding only (sampling by accident is a known benchmark pitfall); these bound and cut the answer."""

    max_new_tokens: int | None = None  # generation budget per answer; None = eval.max_new_tokens
    until: list[str] = field(default_factory=list)  # cut a prediction at the first of these (with eval.stop_strings)


@dataclass
class TaskImageTableConfig:
    """Images kept in a separate table and joined to the questions by a key (GQA's testdev_balanced_images)."""

    dataset_path: str = MISSING  # .parquet / .json / .jsonl file, datasets folder or hub id holding the images
    dataset_name: str | None = None  # hub config name, e.g. testdev_balanced_images
    split: str = "test"  # split of a datasets folder or hub id (ignored for single files)
    key: str = "id"  # the image table's key column
    doc_key: str = "imageId"  # the question column that holds that key
    column: str = "image"  # the image table's image column


@dataclass
class EvalTaskConfig:
    """A benchmark as data + prompt + scoring (`eval/task=<name>`, conf/eval/task/<name>.yaml); names follow
    lmms-eval's TaskConfig. With dataset_path null the task is the recipe's data.test conversations."""

    task: str = "synthetic"  # the task's name, in results.json and W&B keys
    # .json / .jsonl / .parquet file, a datasets folder or a hub id; null = data.test read like training data (its
    # format, image_root, blank_images, max_test_samples), each conversation's last assistant turn the target.
    dataset_path: str | None = None
    dataset_name: str | None = None  # hub config name (load_dataset's `name`), e.g. DocVQA, ScienceQA-IMG, en
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)  # more load_dataset arguments (revision, ...)
    test_split: str = "test"  # split of a datasets folder or hub id (ignored for single files)
    image_root: str | None = None  # folder that relative image paths start from (default: the data file's folder)
    images_table: TaskImageTableConfig | None = None  # images joined in from another table (GQA)
    doc_id: str | None = None  # column with a unique id per doc (MMBench's `index` groups circular copies); None = row
    doc_to_visual: list[str] = field(default_factory=lambda: ["image"])  # image column(s): PIL/bytes/path/base64
    # MMMU: `<image i>` tags in question and options name column image_i; each tag becomes that image, in place.
    image_tags: bool = False
    doc_to_text: str | None = "question"  # the question column; null = no question (captioning: pre/post_prompt)
    hint: str | None = None  # optional context column (ScienceQA / MMBench `hint`); empty or NaN hints are left out
    hint_template: str = "{hint}\n"  # how a present hint renders before the question
    # Options: one column holding a list (ScienceQA `choices`, MMMU `options` as a string repr) or one column per
    # letter (MMBench A..E, empty cells dropped); rendered "A. ...\nB. ..." through options_template.
    doc_to_choice: list[str] = field(default_factory=list)
    options_template: str = "\n{options}"  # how the options block renders after the question
    doc_to_target: str = "answer"  # target column: a string, a list of answers (dicts: their `answer`), or an index
    breakdown: str | None = None  # column to report every mean per value of (ChartQA `type`, MMBench `category`)
    pre_prompt: str = ""  # text before the question
    post_prompt: str = ""  # text after the question (and options): the answer-format instruction
    open_post_prompt: str | None = None  # post_prompt for docs without options in a task that has them (MMMU open)
    generation_kwargs: TaskGenerationConfig = field(default_factory=TaskGenerationConfig)  # decoding limits
    # Per-sample scorers and their aggregations; the first one gives each prediction's `score`.
    metric_list: list[TaskMetricConfig] = field(
        default_factory=lambda: [TaskMetricConfig(metric="exact_match", name="accuracy")])
    limit: int | None = None  # evaluate only the first N docs (before splitting across processes)
    # How the checkpoint answers: generate_until (a VLM writes answers) | retrieval (a dual encoder ranks the images
    # and captions of all docs against each other: recall@k both ways, zero-shot classification)
    output_type: str = "generate_until"
    # retrieval: a regex whose first group, applied to each doc's target caption, is the doc's class for zero-shot
    # classification (e.g. "^a (\w+ \w+)": the synthetic captions' leftmost shape); null = no classification
    class_label: str | None = None
    class_template: str = "a photo of a {}."  # retrieval: the text each class name is embedded as


@dataclass
class RetrievalAugmentConfig:
    """Retrieval-augmented VQA: the k nearest captions of a `vlmtune embed` index go into each question's prompt."""

    embeddings: str | None = None  # a `vlmtune embed` run directory (its encoder and caption embeddings); None = off
    k: int = 3  # captions put into each prompt
    # what searches the captions: image (the question's image, across modalities) | text
    query: Modality = Modality["image"]
    template: str = "Similar pictures: {captions}\n"  # put before the question; {captions} = the captions, spaced


@dataclass
class EvalConfig:
    batch_size: int = 16  # prompts per generation batch on each process
    max_new_tokens: int = 8  # generation budget per answer (a task's generation_kwargs.max_new_tokens wins)
    stop_strings: list[str] = field(default_factory=list)  # cut a prediction at the first of these strings
    likelihood: bool = False  # also report loss / perplexity of the assistant tokens (teacher forcing)
    task: EvalTaskConfig = field(default_factory=EvalTaskConfig)  # what to evaluate on (eval/task=<name>)
    # Also score every question with retrieved captions in its prompt, reported beside the plain scores.
    retrieval: RetrievalAugmentConfig = field(default_factory=RetrievalAugmentConfig)


@dataclass
class LauncherConfig:
    """How many processes run a recipe and which engine spreads the model over them (conf/launcher/<name>.yaml).

    A profile other than `single` makes `vlmtune <recipe>` re-execute itself under `accelerate launch`, with an
    accelerate config file written from these fields to <run_dir>/accelerate_config.yaml (see docs/scaling.md).
    """

    name: str = "single"  # the profile: single | ddp | fsdp2 | zero2 | zero3 | zero3_offload
    num_processes: int = 1  # processes in all, over every machine (accelerate's num_processes): one per GPU
    num_machines: int = 1  # machines (nodes); each runs the same command with its own machine_rank
    machine_rank: int = 0  # this machine's index, 0 .. num_machines - 1; machine 0 hosts the rendezvous
    main_process_ip: str | None = None  # machine 0's address, reachable from every machine (num_machines > 1)
    main_process_port: int = 29500  # a free TCP port on machine 0 for the rendezvous
    preflight: bool = True  # estimate memory per device before training and refuse a run that cannot fit
    device_memory_gb: float | None = None  # memory of one device for the preflight; None = the GPU's (CPU: RAM share)
    # The profile's accelerate config file settings: distributed_type and its deepspeed_config / fsdp_config.
    accelerate: dict[str, Any] = field(default_factory=lambda: {"distributed_type": "NO"})


@dataclass
class RecipeConfig:
    """Fields every recipe shares."""

    run_dir: str = MISSING  # where this run writes its config, checkpoint, metrics and W&B files
    seed: int = 0  # seeds python, numpy and torch (and the data order)
    paths: dict[str, Any] = field(default_factory=dict)  # cache locations, interpolated into other fields
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # experiment tracking
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # processes and engine (launcher=<profile>)


@dataclass
class TrainRecipeConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)  # parts to compose when init_from is not set
    data: DataConfig = field(default_factory=DataConfig)  # training (and held-out) data
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and schedule
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # what trains, part by part (mode, lr, decay)
    peft: PeftConfig = field(default_factory=PeftConfig)  # LoRA settings for the parts in lora / qlora mode
    eval: EvalConfig = field(default_factory=EvalConfig)  # generation settings for the end-of-run evaluation
    init_from: str | None = None  # checkpoint directory of a previous stage; None composes a new model from `model`
    # A folder for the frozen vision tower's features (pretrain, sft): later epochs read them instead of running the
    # encoder. None = no cache.
    vision_feature_cache: str | None = None
    evaluate_at_end: bool = False  # score the test split once training ends (metrics.json in the run directory)
    logging_steps: int = 10  # log the training loss every N steps
    eval_steps: int = 0  # score `eval_samples` test questions every N steps during training; 0 = never
    eval_samples: int = 64  # size of the in-training evaluation subset (the first N of data.test)
    save_steps: int = 0  # write a resumable checkpoint (weights, optimizer, RNG) every N steps; 0 = only at the end
    save_total_limit: int = 2  # keep this many step checkpoints (the oldest are deleted)
    resume: str = "auto"  # auto: continue from the newest complete step checkpoint in run_dir | never | a path


@dataclass
class TextConfig:
    path: str | None = MISSING  # HF hub id or local directory of a text encoder (BERT-like, a CLIP/SigLIP text tower)
    max_length: int = 64  # captions are cut to this many tokens


@dataclass
class DualEncoderConfig:
    """A dual encoder: an existing CLIP / SigLIP checkpoint (`path`), or a vision tower and a text encoder joined by
    new projection heads (transformers' VisionTextDualEncoderModel)."""

    path: str | None = None  # a CLIP / SigLIP / dual encoder checkpoint to train as it is; None = compose the towers
    vision: VisionConfig = field(default_factory=VisionConfig)  # the image tower (any model/vision entry's path)
    text: TextConfig = field(default_factory=TextConfig)  # the text tower (a model/text entry)
    projection_dim: int = 64  # width of the shared embedding space (composed towers only)
    dtype: str = "float32"  # weights dtype when loading: float32 | bfloat16 | float16


@dataclass
class DualPolicyConfig:
    """What trains in a dual encoder; the projection heads, temperature and bias always train."""

    vision: PartPolicy = field(default_factory=lambda: PartPolicy(mode="full"))  # frozen | full | lora
    text: PartPolicy = field(default_factory=lambda: PartPolicy(mode="full"))  # frozen | full | lora


@dataclass
class ContrastiveRecipeConfig(RecipeConfig):
    """`vlmtune contrastive`: train a dual encoder on image-caption pairs (each sample's image and its last answer)."""

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)  # the towers
    data: DataConfig = field(default_factory=DataConfig)  # image-caption pairs (train) and held-out pairs (test)
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and schedule; batch_size is per process
    policy: DualPolicyConfig = field(default_factory=DualPolicyConfig)  # frozen / full / lora per tower
    peft: PeftConfig = field(default_factory=PeftConfig)  # LoRA settings (r, alpha, dropout) for lora towers
    eval: EvalConfig = field(default_factory=EvalConfig)  # the retrieval task scored before and after training
    # clip: InfoNCE both ways with a learned temperature | siglip: a sigmoid per pair, learned temperature and bias
    loss: str = "clip"
    # Hard negatives: none | swap: each caption with two of its phrases (or words) swapped is one more wrong caption
    # for its image (NegCLIP): order and attribute binding, which in-batch negatives rarely test, must be encoded.
    negatives: Negatives = Negatives["none"]
    evaluate_at_end: bool = True  # score data.test's pairs (recall@k, zero-shot) before and after training
    logging_steps: int = 10  # log the training loss every N steps
    save_steps: int = 0  # write a resumable checkpoint every N steps; 0 = only at the end
    save_total_limit: int = 2  # keep this many step checkpoints
    resume: str = "auto"  # auto: continue from the newest complete step checkpoint in run_dir | never | a path


@dataclass
class EmbedRecipeConfig(RecipeConfig):
    """`vlmtune embed`: image and caption embeddings of a data split, with ids, for search and retrieval."""

    checkpoint: str = MISSING  # a dual encoder (CLIP, SigLIP, a contrastive run) or a VLM (image embeddings only)
    data: DataConfig = field(default_factory=DataConfig)  # the samples: each one's image and last answer (caption)
    split: Split = Split["train"]  # which split of `data` to embed: train | test
    batch_size: int = 64  # images or captions per forward pass


@dataclass
class SearchRecipeConfig(RecipeConfig):
    """`vlmtune search`: the nearest items of a `vlmtune embed` output to a text or an image."""

    embeddings: str = MISSING  # a `vlmtune embed` run directory
    text: str | None = None  # the query as text...
    image: str | None = None  # ...or as an image file
    target: Modality = Modality["image"]  # what to return: image (the nearest images) | text (the nearest captions)
    k: int = 5  # how many
    index: str = "Flat"  # FAISS index factory string: Flat (exact inner product) or e.g. IVF16,Flat (trained)


@dataclass
class EvaluateRecipeConfig(RecipeConfig):
    checkpoint: str = MISSING  # model directory: a full checkpoint or a LoRA adapter directory
    data: DataConfig = field(default_factory=DataConfig)  # the test split is read from data.test
    eval: EvalConfig = field(default_factory=EvalConfig)  # generation settings


@dataclass
class QuantizeRecipeConfig(RecipeConfig):
    checkpoint: str = MISSING  # model directory to quantize (a LoRA adapter directory is merged first)
    data: DataConfig = field(default_factory=DataConfig)  # the test split used to measure accuracy
    eval: EvalConfig = field(default_factory=EvalConfig)  # generation settings
    # Variants to compare with full precision (keys of vlmtune.quant.variants.VARIANTS): int8 nf4 fp4 (bitsandbytes),
    # torchao_int8 torchao_int8_dynamic torchao_int4 (extra torchao), quanto_int8 quanto_int4 (extra quanto),
    # awq_int4 (extra autoround). Each is saved as <run_dir>/<variant>/ and measured reloaded from there.
    variants: list[str] = field(default_factory=lambda: ["int8", "nf4"])
    group_size: int = 128  # int4 weights (torchao_int4, awq_int4): values sharing one scale; must divide the widths
    calibration_samples: int = 64  # training samples (images + prompts, data.train) that calibrate awq_int4
    latency_samples: int = 32  # test questions also answered one at a time (batch 1) for latency and tokens/s


@dataclass
class ExportRecipeConfig(RecipeConfig):
    checkpoint: str = MISSING  # adapter directory to merge into its base, or a full checkpoint to rewrite
    results: str | None = None  # an evaluate run's results.json: its metrics go into the model card


@dataclass
class AnswerConfig:
    """How chat, predict and serve answer: greedy, as evaluate does, so the three give evaluate's answers."""

    max_new_tokens: int = 128  # generation budget per answer (answers end earlier at the model's end token)
    stop_strings: list[str] = field(default_factory=list)  # cut an answer at the first of these strings
    # Where an image goes in a question without <image> placeholders: before | after the text. Match the training
    # data (the demo's shapes questions end with the image: after).
    image_position: ImagePosition = ImagePosition["before"]


@dataclass
class ChatRecipeConfig(RecipeConfig):
    """`vlmtune chat`: a terminal conversation with a checkpoint, streamed; `question=` answers once and exits."""

    checkpoint: str = MISSING  # full, adapter (merged on load), quantized (quantize's variants) or HF VLM directory
    image: str | None = None  # the image the first question is about (/image <path> loads another)
    question: str | None = None  # answer this one question, print the answer and exit; None = interactive
    answer: AnswerConfig = field(default_factory=AnswerConfig)  # decoding


@dataclass
class PredictRecipeConfig(RecipeConfig):
    """`vlmtune predict`: answers for a folder of images (one question) or a data file, to a resumable JSONL."""

    checkpoint: str = MISSING  # full, adapter (merged on load), quantized (quantize's variants) or HF VLM directory
    input: str = MISSING  # a folder of images (with `question`), or a .json/.jsonl/.parquet file / datasets folder
    question: str | None = None  # the question asked about every image of the `input` folder
    output: str = MISSING  # the answers (JSONL, one per id); a rerun with the same output skips answered ids
    format: str = "auto"  # records' format in a data file: llava | sharegpt | messages | vqa | auto
    image_root: str | None = None  # folder that relative image paths start from (default: the data file's folder)
    on_error: OnError = OnError["raise"]  # a bad record or image: raise (stop, naming file and line) | skip (go on)
    max_image_pixels: int = 89_478_485  # larger images are refused as decompression bombs
    batch_size: int = 16  # questions per generation batch on each process
    answer: AnswerConfig = field(default_factory=AnswerConfig)  # decoding


@dataclass
class ServeRecipeConfig(RecipeConfig):
    """`vlmtune serve`: a local web page (Gradio) to upload an image and talk to a checkpoint."""

    checkpoint: str | None = None  # the checkpoint to open first; None = the first one found under `runs`
    runs: str | None = None  # a run directory: every checkpoint under it is offered in a list to switch between
    host: str = "127.0.0.1"  # address to listen on (localhost only by default)
    port: int = 7860  # port to listen on; 0 = any free port
    answer: AnswerConfig = field(default_factory=AnswerConfig)  # decoding


@dataclass
class DataToolsConfig(RecipeConfig):
    """`vlmtune data inspect|check`: the data as the model's processor renders it; writes nothing."""

    action: DataAction = DataAction["inspect"]  # inspect: render `samples` samples | check: validate all, report
    model: ModelConfig = field(default_factory=ModelConfig)  # whose processor renders the data (template, tokens)
    data: DataConfig = field(default_factory=DataConfig)  # the data to look at
    init_from: str | None = None  # take the processor from this checkpoint instead of composing `model`
    split: Split = Split["train"]  # which split of `data`: train | test
    samples: int = 3  # inspect: how many samples to render
    color: Color = Color["auto"]  # inspect: auto (on a terminal) | always | never


@dataclass
class DPORecipeConfig(TrainRecipeConfig):
    """`vlmtune dpo`: preference tuning with TRL's DPOTrainer; `data.train` / `data.test` hold preference pairs
    (vlmtune/data/preferences.py) and `evaluate_at_end` scores chosen-vs-rejected margins on `data.test`."""

    beta: float = 0.1  # DPO's beta: how far the policy may move from the reference (larger = closer to it)
    # TRL DPOConfig.loss_type: sigmoid (DPO) | ipo | hinge | robust | apo_zero | ...; comma-separated to combine them
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0  # probability that a preference label is flipped (robust / cDPO losses)


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; conf/<recipe>.yaml lists `<recipe>_schema` first in its defaults."""
    from hydra.core.config_store import ConfigStore

    schemas = {"train": TrainRecipeConfig, "evaluate": EvaluateRecipeConfig, "quantize": QuantizeRecipeConfig,
               "export": ExportRecipeConfig, "data_tools": DataToolsConfig, "dpo": DPORecipeConfig,
               "contrastive": ContrastiveRecipeConfig, "embed": EmbedRecipeConfig, "search": SearchRecipeConfig,
               "chat": ChatRecipeConfig, "predict": PredictRecipeConfig, "serve": ServeRecipeConfig}
    store = ConfigStore.instance()
    for name, node in schemas.items():
        store.store(name=f"{name}_schema", node=node)
