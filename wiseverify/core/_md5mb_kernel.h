/*
 * One multi-buffer MD5 kernel, included by _md5mb.c once per instantiation.
 *
 * Before inclusion: KNAME (the function's name), KLANES (lanes, a power of two)
 * and optionally KTARGET (the GCC target string) and KTRANSPOSE8 (load the
 * message words with AVX2 8x8 transposes instead of one word at a time).  With one lane and no target
 * it is the unrolled scalar MD5.  The body is written once over a GCC
 * vector of KLANES 32-bit words, so the 16-lane AVX-512 kernel and the 16-lane
 * AVX2 kernel (which GCC splits into two interleaved 8-lane groups, hiding
 * the latency of MD5's serial chain) are the same source as the 8-lane AVX2
 * kernel this machine tests.
 *
 * st: the lanes' states, transposed (st[0..KLANES) are the A words, then B,
 * C, D); ptr[l]: lane l's next block; every lane consumes nblocks blocks.
 */

#define KV__(n) n##_vec
#define KV_(n) KV__(n)
#define KV KV_(KNAME)

typedef uint32_t KV __attribute__((vector_size(4 * KLANES), aligned(4 * KLANES)));

#ifdef KTARGET
__attribute__((target(KTARGET)))
#endif
__attribute__((noinline)) static void
KNAME(uint32_t *st, const uint8_t *const *ptr, size_t nblocks)
{
    KV a, b, c, d;
    memcpy(&a, st + 0 * KLANES, sizeof a);
    memcpy(&b, st + 1 * KLANES, sizeof b);
    memcpy(&c, st + 2 * KLANES, sizeof c);
    memcpy(&d, st + 3 * KLANES, sizeof d);
    for (size_t blk = 0; blk < nblocks; blk++) {
        uint32_t m[16][KLANES] __attribute__((aligned(64)));
        KV w[16];
#if defined(KTRANSPOSE8) && KLANES % 8 == 0
        /* 8 lanes x 8 words at a time: 8 loads, an 8x8 transpose in registers, 8 stores */
        for (int g = 0; g < KLANES; g += 8)
            for (int half = 0; half < 2; half++) {
                __m256i r[8], t[8], u[8];
                for (int i = 0; i < 8; i++)
                    r[i] = _mm256_loadu_si256((const __m256i *)(ptr[g + i] + 64 * blk + 32 * half));
                for (int i = 0; i < 8; i += 2) {
                    t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
                    t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
                }
                for (int i = 0; i < 8; i += 4) {
                    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
                    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
                    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
                    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
                }
                for (int k = 0; k < 4; k++) {
                    _mm256_store_si256((__m256i *)&m[8 * half + k][g],
                                       _mm256_permute2x128_si256(u[k], u[k + 4], 0x20));
                    _mm256_store_si256((__m256i *)&m[8 * half + k + 4][g],
                                       _mm256_permute2x128_si256(u[k], u[k + 4], 0x31));
                }
            }
#else
        for (int l = 0; l < KLANES; l++) {
            const uint8_t *p = ptr[l] + 64 * blk;
            for (int j = 0; j < 16; j++) {
                uint32_t x;
                memcpy(&x, p + 4 * j, 4); /* little-endian host: see _md5mb.c */
                m[j][l] = x;
            }
        }
#endif
        for (int j = 0; j < 16; j++)
            memcpy(&w[j], m[j], sizeof w[j]);
        KV aa = a, bb = b, cc = c, dd = d;
#define ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define STEP(f, a_, b_, c_, d_, g, k, s)                                        \
    a_ = a_ + (f) + w[g] + (uint32_t)(k);                                        \
    a_ = ROTL(a_, s) + b_;
#define F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define H(x, y, z) ((x) ^ (y) ^ (z))
#define I(x, y, z) ((y) ^ ((x) | ~(z)))
        STEP(F(b, c, d), a, b, c, d, 0, 0xd76aa478, 7)
        STEP(F(a, b, c), d, a, b, c, 1, 0xe8c7b756, 12)
        STEP(F(d, a, b), c, d, a, b, 2, 0x242070db, 17)
        STEP(F(c, d, a), b, c, d, a, 3, 0xc1bdceee, 22)
        STEP(F(b, c, d), a, b, c, d, 4, 0xf57c0faf, 7)
        STEP(F(a, b, c), d, a, b, c, 5, 0x4787c62a, 12)
        STEP(F(d, a, b), c, d, a, b, 6, 0xa8304613, 17)
        STEP(F(c, d, a), b, c, d, a, 7, 0xfd469501, 22)
        STEP(F(b, c, d), a, b, c, d, 8, 0x698098d8, 7)
        STEP(F(a, b, c), d, a, b, c, 9, 0x8b44f7af, 12)
        STEP(F(d, a, b), c, d, a, b, 10, 0xffff5bb1, 17)
        STEP(F(c, d, a), b, c, d, a, 11, 0x895cd7be, 22)
        STEP(F(b, c, d), a, b, c, d, 12, 0x6b901122, 7)
        STEP(F(a, b, c), d, a, b, c, 13, 0xfd987193, 12)
        STEP(F(d, a, b), c, d, a, b, 14, 0xa679438e, 17)
        STEP(F(c, d, a), b, c, d, a, 15, 0x49b40821, 22)

        STEP(G(b, c, d), a, b, c, d, 1, 0xf61e2562, 5)
        STEP(G(a, b, c), d, a, b, c, 6, 0xc040b340, 9)
        STEP(G(d, a, b), c, d, a, b, 11, 0x265e5a51, 14)
        STEP(G(c, d, a), b, c, d, a, 0, 0xe9b6c7aa, 20)
        STEP(G(b, c, d), a, b, c, d, 5, 0xd62f105d, 5)
        STEP(G(a, b, c), d, a, b, c, 10, 0x02441453, 9)
        STEP(G(d, a, b), c, d, a, b, 15, 0xd8a1e681, 14)
        STEP(G(c, d, a), b, c, d, a, 4, 0xe7d3fbc8, 20)
        STEP(G(b, c, d), a, b, c, d, 9, 0x21e1cde6, 5)
        STEP(G(a, b, c), d, a, b, c, 14, 0xc33707d6, 9)
        STEP(G(d, a, b), c, d, a, b, 3, 0xf4d50d87, 14)
        STEP(G(c, d, a), b, c, d, a, 8, 0x455a14ed, 20)
        STEP(G(b, c, d), a, b, c, d, 13, 0xa9e3e905, 5)
        STEP(G(a, b, c), d, a, b, c, 2, 0xfcefa3f8, 9)
        STEP(G(d, a, b), c, d, a, b, 7, 0x676f02d9, 14)
        STEP(G(c, d, a), b, c, d, a, 12, 0x8d2a4c8a, 20)

        STEP(H(b, c, d), a, b, c, d, 5, 0xfffa3942, 4)
        STEP(H(a, b, c), d, a, b, c, 8, 0x8771f681, 11)
        STEP(H(d, a, b), c, d, a, b, 11, 0x6d9d6122, 16)
        STEP(H(c, d, a), b, c, d, a, 14, 0xfde5380c, 23)
        STEP(H(b, c, d), a, b, c, d, 1, 0xa4beea44, 4)
        STEP(H(a, b, c), d, a, b, c, 4, 0x4bdecfa9, 11)
        STEP(H(d, a, b), c, d, a, b, 7, 0xf6bb4b60, 16)
        STEP(H(c, d, a), b, c, d, a, 10, 0xbebfbc70, 23)
        STEP(H(b, c, d), a, b, c, d, 13, 0x289b7ec6, 4)
        STEP(H(a, b, c), d, a, b, c, 0, 0xeaa127fa, 11)
        STEP(H(d, a, b), c, d, a, b, 3, 0xd4ef3085, 16)
        STEP(H(c, d, a), b, c, d, a, 6, 0x04881d05, 23)
        STEP(H(b, c, d), a, b, c, d, 9, 0xd9d4d039, 4)
        STEP(H(a, b, c), d, a, b, c, 12, 0xe6db99e5, 11)
        STEP(H(d, a, b), c, d, a, b, 15, 0x1fa27cf8, 16)
        STEP(H(c, d, a), b, c, d, a, 2, 0xc4ac5665, 23)

        STEP(I(b, c, d), a, b, c, d, 0, 0xf4292244, 6)
        STEP(I(a, b, c), d, a, b, c, 7, 0x432aff97, 10)
        STEP(I(d, a, b), c, d, a, b, 14, 0xab9423a7, 15)
        STEP(I(c, d, a), b, c, d, a, 5, 0xfc93a039, 21)
        STEP(I(b, c, d), a, b, c, d, 12, 0x655b59c3, 6)
        STEP(I(a, b, c), d, a, b, c, 3, 0x8f0ccc92, 10)
        STEP(I(d, a, b), c, d, a, b, 10, 0xffeff47d, 15)
        STEP(I(c, d, a), b, c, d, a, 1, 0x85845dd1, 21)
        STEP(I(b, c, d), a, b, c, d, 8, 0x6fa87e4f, 6)
        STEP(I(a, b, c), d, a, b, c, 15, 0xfe2ce6e0, 10)
        STEP(I(d, a, b), c, d, a, b, 6, 0xa3014314, 15)
        STEP(I(c, d, a), b, c, d, a, 13, 0x4e0811a1, 21)
        STEP(I(b, c, d), a, b, c, d, 4, 0xf7537e82, 6)
        STEP(I(a, b, c), d, a, b, c, 11, 0xbd3af235, 10)
        STEP(I(d, a, b), c, d, a, b, 2, 0x2ad7d2bb, 15)
        STEP(I(c, d, a), b, c, d, a, 9, 0xeb86d391, 21)
#undef ROTL
#undef STEP
#undef F
#undef G
#undef H
#undef I
        a += aa;
        b += bb;
        c += cc;
        d += dd;
    }
    memcpy(st + 0 * KLANES, &a, sizeof a);
    memcpy(st + 1 * KLANES, &b, sizeof b);
    memcpy(st + 2 * KLANES, &c, sizeof c);
    memcpy(st + 3 * KLANES, &d, sizeof d);
}

#undef KV
#undef KV_
#undef KV__
#undef KNAME
#undef KLANES
#ifdef KTARGET
#undef KTARGET
#endif
#ifdef KTRANSPOSE8
#undef KTRANSPOSE8
#endif
