    if (hs_fa_grouped_applies(params, dst)) {
        ggml_compute_forward_flash_attn_ext_grouped(params, dst);
        return;
    }

