/* image.c - PNG (libpng) and JPEG (libjpeg-turbo) decoding and bilinear resizing; see image.h.
 *
 * Both libraries report fatal errors through a callback that must not return: each decoder
 * longjmps back to its own setjmp, keeping everything it allocated in a struct the recovery
 * path frees (locals changed after setjmp would be indeterminate there).
 */
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jpeglib.h needs FILE and size_t first. */
#include <jerror.h>
#include <jpeglib.h>

#include "util/files.h"

/* The pixels, and at most libpng's row pointers or libjpeg's CMYK row beside them. */
static uint64_t decoded_bytes(int64_t width, int64_t height, int channels) {
    return (uint64_t)width * (uint64_t)height * (uint64_t)channels +
           (uint64_t)height * sizeof(void *) + (uint64_t)width * 4;
}

void image_free(image *img) {
    if (!img) return;
    free(img->pixels);
    img->pixels = NULL;
}

static ddt_status too_large(const char *path, int64_t width, int64_t height) {
    return ddt_error(DDT_ERR_FORMAT, "%s: %lld x %lld pixels is larger than ddtrain decodes (%lld)",
                     path, (long long)width, (long long)height, (long long)IMAGE_MAX_PIXELS);
}

/* DDT_ERR_USAGE when decoding takes more than `max_bytes` (0: no bound): the pixels and
 * `extra` (a decoder's whole-image buffers). Sets *bytes to what it takes. */
static ddt_status check_decoded_bytes(const char *path, int64_t width, int64_t height, int channels,
                                      uint64_t extra, uint64_t max_bytes, uint64_t *bytes_out) {
    uint64_t bytes = decoded_bytes(width, height, channels) + extra;
    *bytes_out = bytes;
    if (max_bytes == 0 || bytes <= max_bytes) return DDT_OK;
    return ddt_error(DDT_ERR_USAGE,
                     "%s: %lld x %lld pixels x %d channel%s take %llu bytes decoded, more than "
                     "the %llu allowed",
                     path, (long long)width, (long long)height, channels, channels == 1 ? "" : "s",
                     (unsigned long long)bytes, (unsigned long long)max_bytes);
}

/* ---- PNG ---------------------------------------------------------------------------------- */

typedef struct png_reader {
    const char *path;
    png_structp png;
    png_infop info;
    uint8_t *pixels;
    png_bytep *rows;
    char message[256];
} png_reader;

/* On the heap: its members change after setjmp and are read after the longjmp. */
static void png_on_error(png_structp png, png_const_charp message) {
    png_reader *r = png_get_error_ptr(png);
    snprintf(r->message, sizeof r->message, "%s", message);
    png_longjmp(png, 1);
}

/* Ancillary-chunk complaints (an iCCP profile libpng dislikes) do not spoil the pixels. */
static void png_on_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static void png_reader_free(png_reader *r) {
    if (r->png) png_destroy_read_struct(&r->png, r->info ? &r->info : NULL, NULL);
    free(r->rows);
    free(r->pixels);
    free(r);
}

static ddt_status read_png(FILE *file, const char *path, uint64_t max_bytes, image *out) {
    png_reader *heap = calloc(1, sizeof *heap);
    if (!heap) return ddt_error(DDT_ERR_MEMORY, "%s: out of memory for libpng", path);
    png_reader *const r = heap;
    r->path = path;
    r->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, png_on_error, png_on_warning);
    if (r->png) r->info = png_create_info_struct(r->png);
    if (!r->png || !r->info) {
        png_reader_free(r);
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory for libpng", path);
    }
    if (setjmp(png_jmpbuf(r->png))) {
        ddt_status status =
            ddt_error(DDT_ERR_FORMAT, "%s: corrupt PNG (libpng: %s)", path, r->message);
        png_reader_free(r);
        return status;
    }
    png_init_io(r->png, file);
    png_set_sig_bytes(r->png, 8); /* read by the caller to tell the format */
    png_read_info(r->png, r->info);
    png_uint_32 width = png_get_image_width(r->png, r->info);
    png_uint_32 height = png_get_image_height(r->png, r->info);
    if ((int64_t)width * (int64_t)height > IMAGE_MAX_PIXELS) {
        png_reader_free(r);
        return too_large(path, width, height);
    }
    int color = png_get_color_type(r->png, r->info);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png);
    if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(r->png, r->info) < 8)
        png_set_expand_gray_1_2_4_to_8(r->png);
    png_set_strip_16(r->png);
    png_set_strip_alpha(r->png); /* also any alpha that palette transparency (tRNS) became */
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);
    int channels = png_get_channels(r->png, r->info);
    if (channels != 1 && channels != 3)
        png_error(r->png, "unexpected channel count after conversion");
    size_t row_bytes = png_get_rowbytes(r->png, r->info);
    uint64_t bytes;
    ddt_status bound = check_decoded_bytes(path, width, height, channels, 0, max_bytes, &bytes);
    if (bound != DDT_OK) {
        png_reader_free(r);
        return bound;
    }
    r->pixels = malloc(row_bytes * height);
    r->rows = malloc(height * sizeof *r->rows);
    if (!r->pixels || !r->rows) png_error(r->png, "out of memory");
    for (png_uint_32 y = 0; y < height; y++)
        r->rows[y] = r->pixels + (size_t)y * row_bytes;
    png_read_image(r->png, r->rows);
    *out = (image){.width = (int)width,
                   .height = (int)height,
                   .channels = channels,
                   .format = IMAGE_FORMAT_PNG,
                   .pixels = r->pixels,
                   .decode_bytes = bytes};
    r->pixels = NULL;
    png_reader_free(r);
    return DDT_OK;
}

/* ---- JPEG --------------------------------------------------------------------------------- */

typedef struct jpeg_reader {
    struct jpeg_error_mgr manager; /* first: libjpeg hands back a pointer to it */
    jmp_buf escape;
    struct jpeg_decompress_struct decoder;
    bool created;
    uint8_t *pixels;
    uint8_t *cmyk_row;
    char message[JMSG_LENGTH_MAX];
    bool corrupt; /* a warning that means the pixels are not the image's */
} jpeg_reader;

static void jpeg_on_error(j_common_ptr common) {
    jpeg_reader *r = (jpeg_reader *)common->err;
    common->err->format_message(common, r->message);
    longjmp(r->escape, 1);
}

/* libjpeg goes on after a warning; the data errors among them mean the pixels are guessed
 * (gray filler after a truncation, a lost scan), which PIL refuses as well. */
static void jpeg_on_message(j_common_ptr common, int level) {
    jpeg_reader *r = (jpeg_reader *)common->err;
    if (level >= 0) return; /* trace messages */
    switch (common->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_HIT_MARKER:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
    case JWRN_BOGUS_PROGRESSION:
        if (!r->corrupt) common->err->format_message(common, r->message);
        r->corrupt = true;
        break;
    default:
        break;
    }
}

static ddt_status read_jpeg(FILE *file, const char *path, uint64_t max_bytes, image *out) {
    jpeg_reader *r = calloc(1, sizeof *r);
    if (!r) return ddt_error(DDT_ERR_MEMORY, "%s: out of memory for libjpeg", path);
    r->decoder.err = jpeg_std_error(&r->manager);
    r->manager.error_exit = jpeg_on_error;
    r->manager.emit_message = jpeg_on_message;
    ddt_status status = DDT_OK;
    if (setjmp(r->escape)) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: corrupt JPEG (libjpeg: %s)", path, r->message);
        goto done;
    }
    jpeg_create_decompress(&r->decoder);
    r->created = true;
    jpeg_stdio_src(&r->decoder, file);
    jpeg_read_header(&r->decoder, TRUE);
    struct jpeg_decompress_struct *d = &r->decoder;
    bool cmyk = d->jpeg_color_space == JCS_CMYK || d->jpeg_color_space == JCS_YCCK;
    bool grey = d->jpeg_color_space == JCS_GRAYSCALE;
    d->out_color_space = cmyk ? JCS_CMYK : grey ? JCS_GRAYSCALE : JCS_RGB;
    if ((int64_t)d->image_width * (int64_t)d->image_height > IMAGE_MAX_PIXELS) {
        status = too_large(path, d->image_width, d->image_height);
        goto done;
    }
    jpeg_calc_output_dimensions(d); /* what jpeg_start_decompress will produce */
    int channels = grey ? 1 : 3;
    size_t width = d->output_width, height = d->output_height;
    /* Checked before jpeg_start_decompress, which reads a progressive (multi-scan) file whole
     * into a buffer of every coefficient of the image: 64 JCOEFs a block, in whole MCUs. */
    uint64_t coefficients = 0;
    for (int c = 0; jpeg_has_multiple_scans(d) && c < d->num_components; c++) {
        const jpeg_component_info *k = &d->comp_info[c];
        uint64_t across = (k->width_in_blocks + (JDIMENSION)k->h_samp_factor),
                 down = (k->height_in_blocks + (JDIMENSION)k->v_samp_factor);
        coefficients += across * down * 64 * sizeof(JCOEF);
    }
    uint64_t bytes;
    status = check_decoded_bytes(path, (int64_t)width, (int64_t)height, channels, coefficients,
                                 max_bytes, &bytes);
    if (status != DDT_OK) goto done;
    jpeg_start_decompress(d);
    r->pixels = malloc(width * height * (size_t)channels);
    if (cmyk) r->cmyk_row = malloc(width * 4);
    if (!r->pixels || (cmyk && !r->cmyk_row)) {
        status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory for %zu x %zu pixels", path, width,
                           height);
        goto done;
    }
    while (d->output_scanline < d->output_height) {
        uint8_t *row = r->pixels + (size_t)d->output_scanline * width * (size_t)channels;
        JSAMPROW target = cmyk ? r->cmyk_row : row;
        if (jpeg_read_scanlines(d, &target, 1) != 1) break;
        /* Adobe's CMYK is stored inverted: R = C*K/255 on the stored values. */
        for (size_t x = 0; cmyk && x < width; x++) {
            const uint8_t *p = r->cmyk_row + 4 * x;
            for (int c = 0; c < 3; c++)
                row[3 * x + (size_t)c] = (uint8_t)((p[c] * p[3] + 127) / 255);
        }
    }
    jpeg_finish_decompress(d);
    if (r->corrupt || d->output_scanline < d->output_height) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: corrupt JPEG (libjpeg: %s)", path,
                           r->corrupt ? r->message : "fewer scanlines than the header declares");
        goto done;
    }
    *out = (image){.width = (int)width,
                   .height = (int)height,
                   .channels = channels,
                   .format = IMAGE_FORMAT_JPEG,
                   .pixels = r->pixels,
                   .decode_bytes = bytes};
    r->pixels = NULL;
done:
    if (r->created) jpeg_destroy_decompress(&r->decoder);
    free(r->cmyk_row);
    free(r->pixels);
    free(r);
    return status;
}

/* ---- reading ------------------------------------------------------------------------------ */

ddt_status image_read(const char *path, image *out) {
    return image_read_bounded(path, 0, out);
}

ddt_status image_read_bounded(const char *path, uint64_t max_bytes, image *out) {
    *out = (image){0};
    FILE *file; /* a regular file only: a FIFO would block, /dev/zero never end */
    DDT_CHECK(file_fopen_regular_input(path, NULL, &file));
    unsigned char signature[8] = {0};
    size_t got = fread(signature, 1, sizeof signature, file);
    ddt_status status;
    if (ferror(file)) {
        status = ddt_error(DDT_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    } else if (got == 8 && png_sig_cmp(signature, 0, 8) == 0) {
        status = read_png(file, path, max_bytes, out);
    } else if (got >= 3 && signature[0] == 0xFF && signature[1] == 0xD8 && signature[2] == 0xFF) {
        rewind(file);
        status = read_jpeg(file, path, max_bytes, out);
    } else {
        status = ddt_error(DDT_ERR_FORMAT, "%s: not a PNG or JPEG file%s", path,
                           got == 0 ? " (empty)" : "");
    }
    fclose(file);
    return status;
}

/* ---- resizing ----------------------------------------------------------------------------- */

/* PyTorch's source coordinate for align_corners=False (upsample's area_pixel_compute_
 * source_index): scale * (destination + 0.5) - 0.5, clamped at 0; the neighbour is the next
 * pixel, clamped to the edge. */
typedef struct sample_1d {
    int low, high;
    float low_weight, high_weight;
} sample_1d;

static sample_1d sample_at(int destination, int in_size, int out_size) {
    float scale = (float)in_size / (float)out_size;
    float source = scale * ((float)destination + 0.5f) - 0.5f;
    if (source < 0) source = 0;
    int low = (int)source;
    if (low > in_size - 1) low = in_size - 1;
    int high = low + (low < in_size - 1 ? 1 : 0);
    float lambda = source - (float)low;
    return (sample_1d){low, high, 1.0f - lambda, lambda};
}

void image_to_chw(const image *img, int channels, int height, int width, float *out) {
    int in_channels = img->channels;
    size_t plane = (size_t)height * (size_t)width;
    for (int y = 0; y < height; y++) {
        sample_1d sy = sample_at(y, img->height, height);
        for (int x = 0; x < width; x++) {
            sample_1d sx = sample_at(x, img->width, width);
            for (int c = 0; c < channels; c++) {
                int source_channel = in_channels == 1 ? 0 : c;
                const uint8_t *p = img->pixels;
                size_t stride = (size_t)img->width * (size_t)in_channels;
                float p00 =
                    p[(size_t)sy.low * stride + (size_t)sx.low * in_channels + source_channel] /
                    255.0f;
                float p01 =
                    p[(size_t)sy.low * stride + (size_t)sx.high * in_channels + source_channel] /
                    255.0f;
                float p10 =
                    p[(size_t)sy.high * stride + (size_t)sx.low * in_channels + source_channel] /
                    255.0f;
                float p11 =
                    p[(size_t)sy.high * stride + (size_t)sx.high * in_channels + source_channel] /
                    255.0f;
                out[(size_t)c * plane + (size_t)y * (size_t)width + (size_t)x] =
                    sy.low_weight * (sx.low_weight * p00 + sx.high_weight * p01) +
                    sy.high_weight * (sx.low_weight * p10 + sx.high_weight * p11);
            }
        }
    }
}
