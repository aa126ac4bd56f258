# Included into whisper.cpp's CMake project by whisper-rs-sys (which forwards every
# CMAKE_* environment variable as a -D definition; see .cargo/config.toml).
#
# With WHISPER_USE_SYSTEM_GGML=ON, whisper.cpp links the shared ggml prefix, but
# whisper-rs-sys tells rustc to link `ggml`, `ggml-base` and `ggml-cpu` while only
# searching its own build tree. Copying the prefix's static libraries into that tree
# makes rustc find them. (RUSTFLAGS="-L ..." would work too, but needs an absolute
# path and changes every crate's build hash.)
if(DEFINED ENV{VOXD_GGML_PREFIX} AND NOT VOXD_GGML_COPIED)
  set(VOXD_GGML_COPIED ON)
  file(GLOB _voxd_ggml_libs "$ENV{VOXD_GGML_PREFIX}/lib/libggml*.a")
  if(NOT _voxd_ggml_libs)
    message(FATAL_ERROR "voxd: no libggml*.a in $ENV{VOXD_GGML_PREFIX}/lib; run ./scripts/setup")
  endif()
  file(COPY ${_voxd_ggml_libs} DESTINATION "${CMAKE_BINARY_DIR}/voxd-ggml")
endif()
