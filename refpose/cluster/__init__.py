"""Running refpose on a Ray cluster: `refpose infer --ray` and `refpose eval --images --ray` (DESIGN section 9).

The inputs become a Ray dataset of items (`ray.data.from_items`: no read task competes with the
actors for CPUs); `map_batches` runs them through a pool of actors, each of which loads the model
once and calls the one image driver (`refpose.pose.driver.run_images`), so a record is the one
`refpose infer` writes for the same image. The driver process writes what the actors return:

- `session`: finding and joining the cluster (`local`, `auto`, an address), with a time-out, and
  sizing the pool to the cluster's CPUs;
- `actors`: the callable classes Ray Data runs (images, videos, evaluation jobs);
- `shards`: the output folder (JSON Lines shards written whole, what is done, what failed);
- `infer`: `refpose infer --ray`; `evaluate`: the job runner of `refpose eval --images --ray`.

Ray is imported only by these modules, and only when a command is given `--ray`.
"""
