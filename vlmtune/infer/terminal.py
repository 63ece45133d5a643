"""The terminal side of `vlmtune chat`: read a line, run a command or stream the answer to it."""

from __future__ import annotations

import sys
from typing import TextIO

from vlmtune.data.errors import DataError
from vlmtune.infer.conversation import Conversation

HELP = """commands:
  /image <path>  show the model another image with the next question
  /clear         forget the conversation (the last image goes with the next question again)
  /quit          leave (Ctrl-D too)
  /help          this list"""


def stream_to(conversation: Conversation, question: str, out: TextIO) -> str:
    """Print the answer to `question` as it is generated; return it whole."""
    for piece in conversation.stream(question):
        out.write(piece)
        out.flush()
    out.write("\n")
    return conversation.last_answer


def chat_loop(conversation: Conversation, out: TextIO = sys.stdout) -> None:
    """Talk until /quit or end of input. A bad /image path is reported and the conversation goes on."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    out.write(f"{HELP}\n")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        command, _, argument = line.partition(" ")
        if not line:
            continue
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            out.write(f"{HELP}\n")
        elif command == "/clear":
            conversation.clear()
            out.write("(conversation cleared)\n")
        elif command == "/image":
            try:
                conversation.add_image(argument.strip(), where="/image")
            except DataError as error:
                out.write(f"error: {error}\n")
            else:
                out.write(f"(image {argument.strip()} goes with the next question)\n")
        elif command.startswith("/"):
            out.write(f"unknown command {command}; /help lists them\n")
        else:
            out.write("model> ")
            stream_to(conversation, line, out)
