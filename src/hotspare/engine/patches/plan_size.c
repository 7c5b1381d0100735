                        // hotspare: grouped flash-attention kernel (scratch per thread + partials)
                        size_t grouped = 0;
                        const int64_t n_tokens = node->src[0]->ne[1];
                        const int64_t n_kv_heads = node->src[1]->ne[2];
                        if (n_kv_heads > 0 && neq2 % n_kv_heads == 0 &&
                            hs_fa_grouped_takes(n_tokens, node->src[1]->ne[1], neq2, DV, n_tasks)) {
                            const int64_t nch = hs_fa_grouped_nchunks(n_tasks, node->src[1]->ne[1]);
                            grouped = sizeof(float)*(hs_fa_grouped_scratch(n_tokens, neq2, n_kv_heads, DK, DV)*n_tasks +
                                                     hs_fa_grouped_partials(neq2, n_tokens, nch, DV));
                        }

