"""The run folder: atomic files, which run a folder holds, and the callback that writes images and results."""
