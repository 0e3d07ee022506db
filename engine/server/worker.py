"""The worker thread: runs one job at a time on the pipeline, reports progress (the overall
fraction is computed here, from STAGE_SPAN), previews and results to the I/O thread through
a queue plus a waker. It never touches the socket or the state directly."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import traceback
import uuid

from engine import download_progress
from engine.errors import Cancelled, EngineError
from protocol.messages import JobState
from protocol.request import GenerateRequest

from .images import decode_image_blob, encode_jpeg, encode_result
from .jobs import Job

log = logging.getLogger("engine.server")

# share of the overall progress fraction each stage covers: (start, end)
STAGE_SPAN = {"encode_text": (0.0, 0.05), "denoise": (0.05, 0.9), "decode": (0.9, 0.95),
              "encode_image": (0.95, 1.0)}


class Worker:
    """Mixed into EngineServer: the worker thread's side."""

    def _post(self, *event) -> None:
        self._events.put(event)
        self._waker.wake()

    # ---- worker thread --------------------------------------------------------------------

    def _worker_main(self) -> None:
        while True:
            kind, job = self._work.get()
            if kind == "stop":
                return
            if kind == "unload":
                try:
                    freed = self.pipeline.unload()
                    self._post("unloaded", {"type": "unloaded", "freed_bytes": int(freed or 0)})
                except BaseException as exc:  # noqa: BLE001 - reported, engine keeps serving
                    log.exception("unload failed")
                    self._post("unloaded", {"type": "error", "job_id": None, **self._err(
                        "internal_error", f"unload failed: {type(exc).__name__}")})
                continue
            if kind == "load":
                try:
                    with download_progress.listening(
                            lambda p: self._post("download", p.to_dict())):
                        pipe = self._loader()
                    self._post("loaded", pipe)
                except BaseException as exc:  # noqa: BLE001 - reported, engine keeps serving
                    log.error("model failed to load: %s", exc)
                    self._post("load_failed", f"{type(exc).__name__}: {exc}"[:500])
                continue
            try:
                self._run_job(job)
            except BaseException:  # noqa: BLE001 - never let the worker die
                err_id = uuid.uuid4().hex[:8]
                log.exception("worker error %s", err_id)
                self._post("done", job, (JobState.FAILED, self._err(
                    "internal_error", f"engine error {err_id} (see engine log)")))

    def _run_job(self, job: Job) -> None:
        pipe = self.pipeline
        want = job.want
        p = job.params
        t_start = self.clock()
        last_step_t = [t_start, None]

        def should_cancel() -> bool:
            return job.cancel_event.is_set() or self.clock() > job.deadline

        def on_progress(pr) -> None:
            stage = getattr(pr, "stage", "denoise")
            step = int(getattr(pr, "step", 0) or 0)
            steps = int(getattr(pr, "steps", 0) or job.steps)
            lo, hi = STAGE_SPAN.get(stage, (0.0, 1.0))
            frac = lo + (hi - lo) * (step / steps if stage == "denoise" and steps else 0.0)
            now = self.clock()
            h = {"type": "progress", "job_id": job.id, "stage": stage, "step": step,
                 "steps": steps, "fraction": round(min(1.0, frac), 4)}
            if stage == "denoise" and step > 0:
                if last_step_t[1] is None:
                    last_step_t[1] = now
                else:
                    per = (now - last_step_t[1]) / max(1, step - 1)
                    h["eta_ms"] = int(per * (steps - step) * 1000)
            self._post("progress", job, h, [])
            every = want["preview_every"]
            latents = getattr(pr, "latents", None)
            if (stage == "denoise" and every and latents is not None and step % every == 0
                    and step < steps):
                try:
                    img = pipe.preview(latents, want["preview_max_side"])
                    data = encode_jpeg(img)
                    ph = {"type": "preview", "job_id": job.id, "step": step, "steps": steps,
                          "blobs": [{"name": "preview", "mime": "image/jpeg",
                                     "bytes": len(data), "width": int(img.shape[1]),
                                     "height": int(img.shape[0]), "channels": 3}]}
                    self._post("progress", job, ph, [data])
                except Exception as exc:  # previews are optional; never fail the job
                    log.debug("preview failed: %s", exc)

        try:
            req = self._make_request(job)
            result = pipe.generate(req, on_progress=on_progress, should_cancel=should_cancel)
            images = list(result.images)
            seeds = [int(x) for x in result.seeds]
            timings = {k: round(float(v), 2) for k, v in dict(result.timings).items()}
        except Cancelled as c:
            if not job.cancel_event.is_set():
                self._post("done", job, (JobState.FAILED, self._err(
                    "deadline_exceeded", f"deadline passed at step {c.step}; job stopped")))
            else:
                self._post("done", job, (JobState.CANCELLED, c.step))
            return
        except EngineError as exc:
            if exc.code == "out_of_memory":
                _free_accelerator_memory()
            fld = exc.field
            if fld and not fld.startswith(("params", "blobs")):
                fld = f"params.{fld}"   # the pipeline names request fields; the wire, params.*
            self._post("done", job, (JobState.FAILED, self._err(exc.code, exc.message, field=fld)))
            return
        except Exception as exc:
            # torch's OutOfMemoryError (or a subclass), by type, not by matching error text;
            # the real pipeline already turns it into EngineError("out_of_memory")
            if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
                _free_accelerator_memory()
                self._post("done", job, (JobState.FAILED, self._err(
                    "out_of_memory", f"out of memory at {p['width']}x{p['height']} x"
                    f"{p['num_images']}: try a smaller size or fewer images")))
                return
            err_id = uuid.uuid4().hex[:8]
            log.error("job %s failed, error %s:\n%s", job.id, err_id, traceback.format_exc())
            self._post("done", job, (JobState.FAILED, self._err(
                "internal_error", f"engine error {err_id}: {type(exc).__name__} (see engine "
                "log)")))
            return
        t_gen = self.clock()
        queue_ms = round((job.started - job.submitted) * 1000, 1)
        timings.update(queue_ms=queue_ms, generate_ms=round((t_gen - t_start) * 1000, 1))

        def finish() -> None:
            t0 = time.perf_counter()
            try:
                blobs, descs = [], []
                fmt = want["result_format"]
                for i, img in enumerate(images):
                    data, desc = encode_result(img, fmt)
                    desc["name"] = f"image{i}"
                    blobs.append(data)
                    descs.append(desc)
                timings["encode_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                header = {"type": "result", "job_id": job.id, "blobs": descs,
                          "images": [{"index": i, "seed": seeds[i] if i < len(seeds) else None,
                                      "blob": i} for i in range(len(blobs))],
                          "seeds": seeds, "timings": timings, "params": job.params}
                self._post("done", job, (JobState.SUCCEEDED, (header, blobs)))
            except Exception as exc:
                log.exception("encoding result of %s failed", job.id)
                self._post("done", job, (JobState.FAILED, self._err(
                    "internal_error", f"encoding the result failed: {type(exc).__name__}")))

        if want["result_format"] == "raw":
            finish()
        else:
            # PNG encoding runs in the pool; the worker takes the next job meanwhile.
            self._post("worker_free", job)
            self._encoder.submit(finish)

    def _make_request(self, job: Job) -> GenerateRequest:
        """The job's typed request with its image blobs decoded (names -> pixels)."""
        req = GenerateRequest.from_clean(job.params)
        blobs = {d["name"]: (d, b) for d, b in zip(job.blob_descs, job.blobs)}
        images = {}
        for key, mode in (("init_image", "RGB"), ("mask", "L"), ("control_image", "RGB")):
            name = getattr(req, key)
            if name is not None:
                d, b = blobs[name]
                images[key] = decode_image_blob(b, d, self.limits, mode, f"params.{key}")
        return dataclasses.replace(req, **images)




def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
