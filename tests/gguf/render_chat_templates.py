#!/usr/bin/env python3
"""Renders chat templates with Jinja2 the way Hugging Face transformers does
(apply_chat_template: ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
raise_exception), for tests/gguf/chat_template_parity_test.cc.

Input JSON: {"templates": {name: jinja source}, "cases": [{"template": name, "messages":
[{"role", "content"}], "add_generation_prompt": bool, "bos_token": str, "eos_token": str}]}.
Output JSON: one entry per case, the rendered string or {"error": message}.
The reference templates of the Llama-2 and Llama-3 chat models are included below, verbatim from
their Hugging Face tokenizer_config.json (meta-llama/Llama-2-7b-chat-hf,
meta-llama/Meta-Llama-3-8B-Instruct); the input may add or override templates.

Usage: render_chat_templates.py IN.json OUT.json
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = {
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}"
        "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"),
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}"),
}


def raise_exception(message):
    raise TemplateError(message)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    sources = dict(TEMPLATES)
    sources.update(spec.get("templates", {}))
    compiled = {name: env.from_string(src) for name, src in sources.items()}
    out = []
    for case in spec["cases"]:
        try:
            out.append(compiled[case["template"]].render(
                messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                bos_token=case.get("bos_token", ""), eos_token=case.get("eos_token", "")))
        except TemplateError as e:
            out.append({"error": str(e)})
    with open(sys.argv[2], "w") as f:
        json.dump({"templates": sources, "outputs": out}, f)


if __name__ == "__main__":
    main()
