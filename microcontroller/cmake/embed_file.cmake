# cmake -DINPUT=file.wav -DOUTPUT=input_wav.c -DSYMBOL=g_input_wav -P embed_file.cmake
# Writes a C file with the bytes of INPUT (16-byte aligned), their count and the file's name.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR size "${digits} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" bytes "${bytes}")
get_filename_component(name "${INPUT}" NAME)
file(WRITE "${OUTPUT}.tmp"
  "/* Generated from ${name} by embed_file.cmake; do not edit. */\n"
  "__attribute__((aligned(16))) const unsigned char ${SYMBOL}[${size}] = {\n${bytes}};\n"
  "const unsigned int ${SYMBOL}_size = ${size};\n"
  "const char ${SYMBOL}_name[] = \"${name}\";\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
