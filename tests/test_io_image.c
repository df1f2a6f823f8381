/* test_io_image.c - PNG decoding (files built here byte by byte with zlib): grey of every
 * depth, grey + alpha, RGB, RGBA, palette with transparency, 16-bit, interlaced; corrupt,
 * truncated, empty and foreign files refused naming the file; and image_to_chw's resizing
 * (bilinear with half-pixel centres: known values, an exact copy at the same size, grey
 * repeated into three channels); the memory bound of image_read_bounded (PNG, and JPEG
 * written here with libjpeg: a progressive file counts its whole-image coefficients); a FIFO
 * refused without blocking. JPEG decoding is covered end to end (tests/e2e/convert_data.sh,
 * with files from cjpeg compared against djpeg). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* jpeglib.h needs FILE and size_t first. */
#include <jpeglib.h>

#include "check.h"
#include "fixtures.h"
#include "io/image.h"

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void write_chunk(FILE *f, const char *kind, const unsigned char *data, uint32_t size) {
    unsigned char head[8];
    put32(head, size);
    memcpy(head + 4, kind, 4);
    fwrite(head, 1, 8, f);
    if (size) fwrite(data, 1, size, f);
    uLong crc = crc32(0, (const Bytef *)kind, 4);
    crc = crc32(crc, data, size);
    unsigned char tail[4];
    put32(tail, (uint32_t)crc);
    fwrite(tail, 1, 4, f);
}

/* A PNG of `rows` already filtered (each row: filter byte 0 + data), with optional palette and
 * tRNS, interlace method `interlace`; `truncate` > 0 cuts the file to that many bytes, and
 * `bad_crc` spoils IDAT's checksum. */
typedef struct png_spec {
    int width, height, depth, colour, interlace;
    const unsigned char *raw; /* filtered rows */
    size_t raw_size;
    const unsigned char *palette, *trns;
    int palette_size, trns_size;
    long truncate;
    int bad_crc;
} png_spec;

static void write_png(const char *path, const png_spec *s) {
    FILE *f = fopen(path, "wb");
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    fwrite(signature, 1, 8, f);
    unsigned char ihdr[13];
    put32(ihdr, (uint32_t)s->width);
    put32(ihdr + 4, (uint32_t)s->height);
    ihdr[8] = (unsigned char)s->depth;
    ihdr[9] = (unsigned char)s->colour;
    ihdr[10] = ihdr[11] = 0;
    ihdr[12] = (unsigned char)s->interlace;
    write_chunk(f, "IHDR", ihdr, 13);
    if (s->palette) write_chunk(f, "PLTE", s->palette, (uint32_t)s->palette_size);
    if (s->trns) write_chunk(f, "tRNS", s->trns, (uint32_t)s->trns_size);
    uLongf packed_size = compressBound(s->raw_size);
    unsigned char *packed = malloc(packed_size);
    compress(packed, &packed_size, s->raw, s->raw_size);
    long idat_at = ftell(f);
    write_chunk(f, "IDAT", packed, (uint32_t)packed_size);
    free(packed);
    write_chunk(f, "IEND", NULL, 0);
    if (s->bad_crc) {
        fseek(f, idat_at + 8 + (long)packed_size, SEEK_SET);
        fputc(0x55, f);
    }
    fclose(f);
    if (s->truncate) truncate(path, s->truncate);
}

/* A PNG without palette, transparency or damage. */
static png_spec png(int width, int height, int depth, int colour, int interlace,
                    const unsigned char *raw, size_t raw_size) {
    return (png_spec){.width = width,
                      .height = height,
                      .depth = depth,
                      .colour = colour,
                      .interlace = interlace,
                      .raw = raw,
                      .raw_size = raw_size};
}

/* Writes SPEC to PATH and decodes it into IMG; whether that worked (a failure is checked). */
static int decoded(const char *path, png_spec spec, image *img) {
    write_png(path, &spec);
    ddt_status status = image_read(path, img);
    CHECK_OK(status);
    return status == DDT_OK;
}

static void expect_refused(const char *path, ddt_status code, const char *text) {
    image img = {.pixels = (uint8_t *)1};
    CHECK_FAILS(image_read(path, &img), code, path, text);
    CHECK(img.pixels == NULL);
}

static void test_png_kinds(void) {
    image img;
    const char *path = fixture_path("rgb.png");
    /* RGB 2 x 2 */
    unsigned char rgb[] = {0, 10, 20, 30, 40, 50, 60, 0, 70, 80, 90, 100, 110, 120};
    if (decoded(path, png(2, 2, 8, 2, 0, rgb, sizeof rgb), &img)) {
        CHECK(img.width == 2 && img.height == 2 && img.channels == 3 &&
              img.format == IMAGE_FORMAT_PNG);
        CHECK(img.pixels[0] == 10 && img.pixels[5] == 60 && img.pixels[11] == 120);
        image_free(&img);
        CHECK(img.pixels == NULL);
    }
    /* RGBA: alpha dropped, colours kept as stored (not composited) */
    unsigned char rgba[] = {0, 200, 100, 50, 0, 1, 2, 3, 4};
    if (decoded(path, png(2, 1, 8, 6, 0, rgba, sizeof rgba), &img)) {
        CHECK(img.channels == 3 && img.pixels[0] == 200 && img.pixels[2] == 50 &&
              img.pixels[3] == 1 && img.pixels[5] == 3);
        image_free(&img);
    }
    /* grey + alpha -> one channel */
    unsigned char grey_alpha[] = {0, 77, 0, 99, 255};
    if (decoded(path, png(2, 1, 8, 4, 0, grey_alpha, sizeof grey_alpha), &img)) {
        CHECK(img.channels == 1 && img.pixels[0] == 77 && img.pixels[1] == 99);
        image_free(&img);
    }
    /* 2-bit grey: expanded to 8 bits (0..3 -> 0, 85, 170, 255) */
    unsigned char grey2[] = {0, 0x1B}; /* 00 01 10 11 */
    if (decoded(path, png(4, 1, 2, 0, 0, grey2, sizeof grey2), &img)) {
        CHECK(img.channels == 1 && img.pixels[0] == 0 && img.pixels[1] == 85 &&
              img.pixels[2] == 170 && img.pixels[3] == 255);
        image_free(&img);
    }
    /* 16-bit grey: the high byte */
    unsigned char grey16[] = {0, 0x12, 0x34, 0xFF, 0x01};
    if (decoded(path, png(2, 1, 16, 0, 0, grey16, sizeof grey16), &img)) {
        CHECK(img.channels == 1 && img.pixels[0] == 0x12 && img.pixels[1] == 0xFF);
        image_free(&img);
    }
    /* palette with transparency -> RGB, transparency dropped */
    unsigned char indices[] = {0, 1, 0};
    unsigned char palette[] = {9, 8, 7, 250, 0, 5};
    unsigned char trns[] = {0, 128};
    png_spec p = png(2, 1, 8, 3, 0, indices, sizeof indices);
    p.palette = palette;
    p.palette_size = 6;
    p.trns = trns;
    p.trns_size = 2;
    if (decoded(path, p, &img)) {
        CHECK(img.channels == 3 && img.pixels[0] == 250 && img.pixels[2] == 5 &&
              img.pixels[3] == 9 && img.pixels[5] == 7);
        image_free(&img);
    }
    /* Adam7-interlaced 1 x 1 grey (one pass holds the pixel) */
    unsigned char one[] = {0, 42};
    if (decoded(path, png(1, 1, 8, 0, 1, one, sizeof one), &img)) {
        CHECK(img.pixels[0] == 42);
        image_free(&img);
    }
}

static void test_bad_files(void) {
    unsigned char rgb[4 * (1 + 3 * 4)]; /* 4 rows of 4 RGB pixels, each after filter byte 0 */
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (unsigned char)(i % 13 == 0 ? 0 : i * 5);
    const char *path = fixture_path("bad.png");
    png_spec spoilt = png(4, 4, 8, 2, 0, rgb, sizeof rgb);
    spoilt.bad_crc = 1;
    write_png(path, &spoilt);
    expect_refused(path, DDT_ERR_FORMAT, "corrupt PNG (libpng: IDAT: CRC error)");
    png_spec truncated = png(4, 4, 8, 2, 0, rgb, sizeof rgb);
    truncated.truncate = 50;
    write_png(path, &truncated);
    expect_refused(path, DDT_ERR_FORMAT, "corrupt PNG");
    FILE *f = fopen(path, "wb");
    fclose(f);
    expect_refused(path, DDT_ERR_FORMAT, "not a PNG or JPEG file (empty)");
    f = fopen(path, "wb");
    fputs("GIF89a, not ours", f);
    fclose(f);
    expect_refused(path, DDT_ERR_FORMAT, "not a PNG or JPEG file");
    expect_refused(fixture_path("absent.png"), DDT_ERR_IO,
                   "cannot open: No such file or directory");
    /* A header that claims more pixels than ddtrain decodes: refused before allocating. */
    png_spec huge = png(30000, 30000, 8, 0, 0, rgb, 4);
    write_png(path, &huge);
    expect_refused(path, DDT_ERR_FORMAT, "larger than ddtrain decodes");
}

static void test_resize(void) {
    /* 2 x 1 grey (0, 255) to 4 x 1: source x = 0.5 (x + 0.5) - 0.5, clamped: 0, .25, .75, 1 */
    uint8_t line[2] = {0, 255};
    image img = {.width = 2, .height = 1, .channels = 1, .pixels = line};
    float out[3 * 4];
    image_to_chw(&img, 1, 1, 4, out);
    CHECK(out[0] == 0 && out[1] == 0.25f && out[2] == 0.75f && out[3] == 1.0f);
    /* grey repeated into three planes */
    image_to_chw(&img, 3, 1, 4, out);
    CHECK(out[4] == 0 && out[5] == 0.25f && out[10] == 0.75f && out[11] == 1.0f);
    /* the same size: an exact copy, CHW from interleaved RGB */
    uint8_t rgb[2 * 3 * 3];
    for (int i = 0; i < 18; i++)
        rgb[i] = (uint8_t)(i * 13);
    image colour = {.width = 3, .height = 2, .channels = 3, .pixels = rgb};
    float chw[18];
    image_to_chw(&colour, 3, 2, 3, chw);
    int exact = 1;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++)
                exact &= chw[c * 6 + y * 3 + x] == (float)rgb[(y * 3 + x) * 3 + c] / 255.0f;
    CHECK(exact);
    /* 4 x 1 to 2 x 1 (scale 2): source x = 2 (x + 0.5) - 0.5 = 0.5, 2.5: halfway pairs */
    uint8_t four[4] = {0, 100, 200, 250};
    image wide = {.width = 4, .height = 1, .channels = 1, .pixels = four};
    image_to_chw(&wide, 1, 1, 2, out);
    CHECK_NEAR(out[0], 50.0 / 255, 1e-6);
    CHECK_NEAR(out[1], 225.0 / 255, 1e-6);
}

/* A width x height RGB JPEG (libjpeg's defaults: 4:2:0), progressive or baseline. */
static void write_jpeg(const char *path, int width, int height, int progressive) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr errors;
    c.err = jpeg_std_error(&errors);
    jpeg_create_compress(&c);
    FILE *f = fopen(path, "wb");
    if (!f) {
        CHECK(f != NULL);
        jpeg_destroy_compress(&c);
        return;
    }
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)width;
    c.image_height = (JDIMENSION)height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    if (progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    unsigned char *row = malloc((size_t)width * 3);
    while (row && c.next_scanline < c.image_height) {
        for (int x = 0; x < width * 3; x++)
            row[x] = (unsigned char)(x * 7 + (int)c.next_scanline * 3);
        JSAMPROW rows[1] = {row};
        jpeg_write_scanlines(&c, rows, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    fclose(f);
}

/* image_read_bounded: what decoding takes is known before the pixels are allocated; more
 * than the bound is DDT_ERR_USAGE naming the numbers, exactly the bound is decoded. */
static void test_bounds(void) {
    const char *path = fixture_path("bounded.png");
    uint8_t grey[30 * (1 + 40)]; /* each row: filter 0, then 40 pixels */
    memset(grey, 100, sizeof grey);
    for (int y = 0; y < 30; y++)
        grey[y * 41] = 0;
    png_spec bounded = png(40, 30, 8, 0, 0, grey, sizeof grey);
    write_png(path, &bounded);
    /* 40 x 30 pixels, 30 row pointers, a 4-byte-per-pixel row: 1200 + 240 + 160 */
    image img = {0};
    CHECK(image_read_bounded(path, 1599, &img) == DDT_ERR_USAGE && img.pixels == NULL);
    CHECK(strstr(ddt_error_message(),
                 "bounded.png: 40 x 30 pixels x 1 channel take 1600 bytes decoded, more than the "
                 "1599 allowed") != NULL);
    CHECK_OK(image_read_bounded(path, 1600, &img));
    CHECK(img.decode_bytes == 1600 && img.pixels != NULL);
    image_free(&img);

    /* A baseline JPEG holds its pixels; a progressive one also every coefficient of the image
     * (64 x 48, 4:2:0: 10 x 8 luma blocks and 5 x 4 of each chroma, in whole MCUs, 2 bytes
     * each of 64), before jpeg_start_decompress allocates them. */
    const char *baseline = fixture_path("baseline.jpg"),
               *progressive = fixture_path("progressive.jpg");
    write_jpeg(baseline, 64, 48, 0);
    write_jpeg(progressive, 64, 48, 1);
    uint64_t pixels = 64 * 48 * 3 + 48 * 8 + 64 * 4, coefficients = (80 + 2 * 20) * 64 * 2;
    CHECK_OK(image_read_bounded(baseline, pixels, &img));
    CHECK(img.decode_bytes == pixels && img.channels == 3);
    image_free(&img);
    CHECK(image_read_bounded(progressive, pixels + coefficients - 1, &img) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "progressive.jpg: 64 x 48 pixels x 3 channels") != NULL);
    CHECK_OK(image_read_bounded(progressive, pixels + coefficients, &img));
    CHECK(img.decode_bytes == pixels + coefficients);
    image_free(&img);
}

/* A FIFO named like an image is refused by name at once (opening it would wait for a writer). */
static void test_fifo(void) {
    const char *path = fixture_path("fifo.png");
    unlink(path);
    CHECK(mkfifo(path, 0600) == 0);
    expect_refused(path, DDT_ERR_USAGE, "not a regular file but a FIFO (named pipe)");
    unlink(path);
}

int main(void) {
    test_png_kinds();
    test_bad_files();
    test_resize();
    test_bounds();
    test_fifo();
    return check_finish();
}
