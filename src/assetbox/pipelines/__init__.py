"""Model work (torch, diffusers, spandrel, ncnn): one file per task, no file or network I/O."""
