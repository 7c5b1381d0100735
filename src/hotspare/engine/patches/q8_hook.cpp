#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    if (cur->type == GGML_TYPE_Q8_0 && ggml_n_dims(cur) == 2 && cur->ne[1] % hs_q8::ROWS == 0 && hs_q8::enabled()) {
        static const hs_q8::traits q8_0_16x4;  // hotspare's layout (q8_repack.cpp)
        return &q8_0_16x4;
    }
#endif
