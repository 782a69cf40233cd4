"""train/train.py end to end on the CPU at toy size: the reproducibility check passes (two short
runs from one seed give identical weights), the export is a Hugging Face directory with the
expected tensors, and a run paused with --stop-after and continued with --resume ends with the
same weights as one uninterrupted run; a run with a fact schedule and a task variant trains and
exports (restated answers); a run started from an export (--init-from) begins with its
weights, and one whose shape differs is refused; two data-parallel processes train as one does; bad task options stop the script before any work, with a message
that names the fix; train/run_pair.sh runs trainings side by side, packs each export, and reports the
one that failed; train/miss_analysis.py reads an export and prints its table.

Needs torch (the Hugging Face venv, tests/gguf/hf_parity_setup.sh); exit 77 (skipped) without it.
About a minute on one core.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

try:
    import torch  # noqa: F401
    import safetensors  # noqa: F401
    import sentencepiece  # noqa: F401
except ImportError as e:  # pragma: no cover - environment
    print(f"skipped: {e}")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "train", "train.py")
TOKENIZER = os.path.join(ROOT, "models", "longctx")
COMMON = ["--tokenizer", TOKENIZER, "--tiny", "--max-len", "512", "--tokens-per-step", "1024",
          "--steps", "6", "--warmup", "2", "--eval-lengths", "256", "--eval-docs", "1",
          "--eval-questions", "2", "--workers", "2", "--seed", "5"]


def run(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, TRAIN, "--out", out, "--ckpt-dir",
                        os.path.join(out, "ckpt")] + COMMON + list(extra),
                       capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"train.py failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def launch(world, out, *extra):
    """train.py as `world` data-parallel processes on the CPU, with the environment torchrun
    gives them: (exit codes, outputs) by rank."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [sys.executable, TRAIN, "--out", out, "--ckpt-dir", os.path.join(out, "ckpt")] + \
        COMMON + list(extra)
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                   RANK=str(rank), LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outs


def digest(log):
    m = re.findall(r"exported .*: digest ([0-9a-f]+)", log)
    assert m, log
    return m[-1]


class TrainSmokeTest(unittest.TestCase):
    def test_repro_export_and_resume(self):
        with tempfile.TemporaryDirectory() as tmp:
            a = os.path.join(tmp, "a")
            log_a = run(a, "--repro-steps", "3", "--repro-tokens", "512")
            self.assertIn("SAME", log_a)
            hf = os.path.join(a, "longctx")
            for f in ("config.json", "generation_config.json", "model.safetensors",
                      "tokenizer.json", "tokenizer_config.json"):
                self.assertTrue(os.path.exists(os.path.join(hf, f)), f)
            with open(os.path.join(hf, "config.json")) as f:
                cfg = json.load(f)
            self.assertEqual(cfg["model_type"], "llama")
            self.assertTrue(cfg["tie_word_embeddings"])
            from safetensors.torch import load_file
            tensors = load_file(os.path.join(hf, "model.safetensors"))
            self.assertEqual(len(tensors), 2 + 9 * cfg["num_hidden_layers"])
            self.assertNotIn("lm_head.weight", tensors)
            self.assertEqual(tuple(tensors["model.embed_tokens.weight"].shape),
                             (cfg["vocab_size"], cfg["hidden_size"]))
            self.assertTrue(os.path.exists(os.path.join(a, "eval.json")))

            # A run continuing the export (--init-from) starts from its weights, exactly.
            sys.path.insert(0, os.path.join(ROOT, "train"))
            import train as train_py
            want = train_py.weights_digest(train_py.load_exported(hf, torch.device("cpu")))
            c = os.path.join(tmp, "c")
            log_c = run(c, "--repro-steps", "0", "--init-from", hf, "--curriculum-from", "1.0")
            self.assertIn(f"initialised from {hf}: digest {want}", log_c)
            self.assertNotEqual(digest(log_c), digest(log_a))
            env = dict(os.environ, OMP_NUM_THREADS="1")
            p = subprocess.run([sys.executable, TRAIN, "--out", os.path.join(tmp, "d")] + COMMON +
                               ["--init-from", hf, "--shape", "hidden_size=96"],
                               capture_output=True, text=True, env=env, timeout=120)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("its shape differs from this run's", p.stderr)
            self.assertIn("'hidden_size': (64, 96)", p.stderr)

            b = os.path.join(tmp, "b")
            log_b1 = run(b, "--repro-steps", "0", "--stop-after", "3")
            self.assertIn("paused after step 3 of 6", log_b1)
            log_b2 = run(b, "--repro-steps", "0", "--resume")
            self.assertIn("resumed at step 3 of 6", log_b2)
            self.assertEqual(digest(log_b2), digest(log_a))

    def test_data_parallel_trains_as_one_process(self):
        """Two processes on the CPU (gloo), started as torchrun starts them: the step's rows are
        shared, the averaged figures equal one process's, the weights of both processes agree,
        and only the first process logs and exports."""
        with tempfile.TemporaryDirectory() as tmp:
            one = run(os.path.join(tmp, "one"), "--repro-steps", "0")
            codes, outs = launch(2, os.path.join(tmp, "dp"), "--repro-steps", "3")
            self.assertEqual(codes, [0, 0], outs)
            self.assertIn("repro: skipped (data parallel", outs[0])
            self.assertIn("data parallel: weights of the 2 processes identical", outs[0])
            self.assertIn("exported", outs[0])
            self.assertEqual(outs[1].strip(), "")
            figures = r"loss_ans (\S+) loss_lm (\S+) ans_acc (\S+)"
            self.assertEqual(re.findall(figures, outs[0]), re.findall(figures, one))
            self.assertEqual(len(re.findall(figures, one)), 1)

    def test_data_parallel_bad_options(self):
        for extra, msg in [(["--steps", "0"], "needs --steps"),
                           (["--tokens-per-step", "512"], "fewer than the 2 processes")]:
            with tempfile.TemporaryDirectory() as tmp:
                codes, outs = launch(2, tmp, "--repro-steps", "0", *extra)
                self.assertEqual(codes, [2, 2], outs)
                self.assertIn(msg, outs[0])

    def test_bad_task_options_fail_before_any_work(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for extra, msg in [(["--fact-schedule", "4@0.5"], "must start at share 0"),
                           (["--fact-schedule", "2@0", "--curriculum", "gated"],
                            "applies to the fixed curriculum"),
                           (["--task-variant", "unique"], "invalid choice: 'unique'"),
                           (["--answer-format", "both"], "invalid choice: 'both'"),
                           (["--curriculum-from", "1.5"], "want a share of the schedule"),
                           (["--curriculum-from", "0.5", "--curriculum", "gated"],
                            "apply to the fixed curriculum"),
                           (["--length-ramp", "-1"], "want a share of the steps >= 0"),
                           (["--length-ramp", "0.1", "--curriculum", "gated"],
                            "apply to the fixed curriculum"),
                           (["--init-from", ROOT], "no model.safetensors there")]:
            with tempfile.TemporaryDirectory() as tmp:
                p = subprocess.run([sys.executable, TRAIN, "--out", tmp] + COMMON + extra,
                                   capture_output=True, text=True, env=env, timeout=120)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(msg, p.stderr)
                self.assertFalse(os.path.exists(os.path.join(tmp, "train_log.txt")))

    def test_capped_facts_and_a_task_variant_train(self):
        with tempfile.TemporaryDirectory() as tmp:
            log = run(tmp, "--repro-steps", "0", "--fact-schedule", "2@0,all@0.5",
                      "--task-variant", "distinct", "--twohop-share", "0",
                      "--answer-format", "restate")
            self.assertIn('"fact_schedule": "2@0,all@0.5"', log)
            self.assertIn("exported", log)
            # The miss analysis reads the export (restated answers) and prints its table.
            p = subprocess.run([sys.executable, os.path.join(ROOT, "train", "miss_analysis.py"),
                                "--model", os.path.join(tmp, "longctx"), "--tokenizer",
                                TOKENIZER, "--task-variant", "distinct", "--answer-format",
                                "restate", "--length", "256", "--docs", "2"],
                               capture_output=True, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("| facts of the asked attribute (k) |", p.stdout)
            self.assertRegex(p.stdout, r"\| \d+ \| \d+ \| [01]\.\d\d \| [01]\.\d\d \| \d+/\d+ \|")

    def test_run_pair_trains_side_by_side_and_reports_a_failed_run(self):
        tiny = ("--tiny --max-len 512 --tokens-per-step 1024 --steps 3 --warmup 2 "
                "--repro-steps 0 --eval-lengths 256 --eval-docs 1 --eval-questions 2 "
                "--workers 1 --task-variant distinct --answer-format restate")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            env = dict(os.environ, OMP_NUM_THREADS="1", OUT=out, WORK=os.path.join(tmp, "w"),
                       PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
            script = os.path.join(ROOT, "train", "run_pair.sh")
            p = subprocess.run(["bash", script, "good", tiny, "bad",
                                tiny.replace("distinct", "unique")],
                               capture_output=True, text=True, env=env, timeout=300)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            import tarfile
            with tarfile.open(os.path.join(out, "good.tar")) as t:
                self.assertEqual(sorted(t.getnames()),
                                 ["config.json", "eval.json", "model.safetensors"])
            self.assertTrue(os.path.exists(os.path.join(out, "good.log")))
            self.assertFalse(os.path.exists(os.path.join(out, "bad.tar")))
            with open(os.path.join(out, "bad.log")) as f:
                self.assertIn("invalid choice: 'unique'", f.read())
            with open(os.path.join(out, "good.log")) as f:
                self.assertIn('"answer_format": "restate"', f.read())
            usage = subprocess.run(["bash", script, "only-a-name"], capture_output=True,
                                   text=True, env=env, timeout=60)
            self.assertEqual(usage.returncode, 2)
            self.assertIn("usage:", usage.stderr)
            crowded = subprocess.run(["bash", script, "a", tiny, "b", tiny, "c", tiny],
                                     capture_output=True, text=True,
                                     env=dict(env, GPUS="0 1"), timeout=60)
            self.assertEqual(crowded.returncode, 2)
            self.assertIn("3 runs but 2 GPU entries", crowded.stderr)


if __name__ == "__main__":
    unittest.main()
