/* image.h - decoding PNG and JPEG files (Debian's libpng and libjpeg-turbo) and turning them
 * into the float CHW rows a dataset holds (used by `ddtrain convert images`).
 *
 * Decoding follows what torchvision's ImageFolder loader gives a PyTorch user (PIL's
 * Image.open(path).convert("RGB")), except that grey images stay one channel until
 * image_to_chw() is asked for three:
 *   - the format is told by the file's signature, not its name;
 *   - grey (any bit depth) -> 1 channel; grey + alpha -> 1 (alpha dropped);
 *   - RGB, RGBA and palette images -> 3 channels (alpha and palette transparency dropped,
 *     not composited, as PIL's convert("RGB") does);
 *   - 16-bit samples keep their high byte; gamma and colour profiles are not applied;
 *   - JPEG: grey -> 1, YCbCr/RGB -> 3, CMYK and YCCK (Adobe, inverted) -> 3 by
 *     R = C*K/255 (likewise G, B), libjpeg's default (islow) DCT and fancy upsampling.
 * A file that is unreadable, truncated or corrupt (a libpng error, a JPEG that libjpeg
 * reports as premature, bad Huffman codes or a bad scan; JPEG's harmless warnings
 * such as extraneous bytes are accepted, as PIL accepts them) is an error naming the file
 * and the library's words, never a partial image.
 *
 * Resizing (image_to_chw): bilinear with half-pixel centres and edge clamping, no
 * antialiasing: torch.nn.functional.interpolate(x, size, mode="bilinear",
 * align_corners=False) on the image scaled to [0, 1]. Shrinking by more than 2x therefore
 * skips pixels (aliases); same size is an exact copy.
 *
 * Ownership: image_read() fills an image whose pixels the caller frees with image_free().
 *
 * Usage:
 *     image img;
 *     DDT_CHECK(image_read("cats/001.jpg", &img));
 *     image_to_chw(&img, 3, 32, 32, row);   // 3 x 32 x 32 floats in [0, 1]
 *     image_free(&img);
 */
#ifndef DDT_IO_IMAGE_H
#define DDT_IO_IMAGE_H

#include <stdint.h>

#include "util/status.h"

/* Largest image decoded, in pixels (a decompression bomb is refused, not allocated). */
#define IMAGE_MAX_PIXELS ((int64_t)1 << 28)

typedef enum image_format {
    IMAGE_FORMAT_PNG,
    IMAGE_FORMAT_JPEG,
} image_format;

typedef struct image {
    int width, height;
    int channels; /* 1 (grey) or 3 (RGB) */
    image_format format;
    uint8_t *pixels;       /* height x width x channels, interleaved, rows top to bottom */
    uint64_t decode_bytes; /* at most what decoding it held: the pixels, a row's bookkeeping
                            * and a progressive JPEG's coefficients (image_read_bounded) */
} image;

/* Decodes the PNG or JPEG file `path` into *out (see the rules above). DDT_ERR_IO when it
 * cannot be opened or read, DDT_ERR_USAGE when it is not a regular file (a FIFO, a device:
 * refused before it is opened, util/files.h), DDT_ERR_FORMAT when it is neither format, corrupt,
 * truncated or larger than IMAGE_MAX_PIXELS; the message names the file. *out is empty on failure.
 */
ddt_status image_read(const char *path, image *out);
/* image_read(), refusing (DDT_ERR_USAGE, before allocating) an image whose decoded pixels
 * would take more than `max_bytes` (0: no bound but IMAGE_MAX_PIXELS). */
ddt_status image_read_bounded(const char *path, uint64_t max_bytes, image *out);
void image_free(image *img);

/* Writes `img` as channels x height x width floats in [0, 1] (pixel / 255), resized
 * bilinearly (above) when its size differs. channels is 1 or 3: a grey image is repeated
 * into three channels; a colour image asked for one channel is a caller error (not done). */
void image_to_chw(const image *img, int channels, int height, int width, float *out);

#endif
