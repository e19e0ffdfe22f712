//! dsbox-kernel: persistent Python kernels inside sandboxes, forked from a zygote that
//! already holds pandas, handed out from warm pools, returning Jupyter-style outputs.
