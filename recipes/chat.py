"""Talk to a checkpoint in the terminal: the answer streams token by token, turn after turn.

Run as `vlmtune chat checkpoint=<dir> image=<png>` (commands: /image <path>, /clear, /quit), or with
`question="..."` to print one answer and exit. Full, adapter (merged on load), quantized and HF VLM checkpoints
all answer through their own chat template, greedily, as `evaluate` does.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="chat", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import sys

    from vlmtune.infer.conversation import Conversation
    from vlmtune.infer.terminal import chat_loop, stream_to
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.runs import start_run

    run = start_run(cfg, "chat")
    cfg = run.cfg
    model, processor = load_vlm(cfg.checkpoint, device=run.state.device)
    conversation = Conversation(model, processor, max_new_tokens=cfg.answer.max_new_tokens,
                                stop_strings=cfg.answer.stop_strings, image_position=cfg.answer.image_position)
    if cfg.image is not None:
        conversation.add_image(cfg.image, where="image=")
    if cfg.question is not None:
        stream_to(conversation, cfg.question, sys.stdout)
    else:
        chat_loop(conversation)
    run.finish()


if __name__ == "__main__":
    run_command(main)
