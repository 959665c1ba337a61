#!/usr/bin/env bash
# Builds the operator package of kernels/ascend: build_out/custom_opp_<os>_<arch>.run.
#
# Needs a CANN toolkit (8.0 or later) on the machine; nothing else in this repository does. Two ways to build,
# chosen by what the toolkit provides:
#   modules  CANN ships the Ascend C CMake modules (find_package(ASC), npu_op_*): this directory's CMakeLists.txt
#            are used as they are;
#   msopgen  older toolkits: msopgen generates a project from gf_ops.json (its own cmake/ scripts and CMakeLists),
#            and this directory's op_host/ and op_kernel/ sources replace the generated stubs.
# Force one with --mode. The package is then installed with  build_out/custom_opp_*.run --install-path=<dir>
# (see README.md); tools/ascend_selftest.py does both.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cann=""
vendor="mindformer_gf"
build_dir="${here}/build_out"
mode="auto"
jobs="$(nproc 2>/dev/null || echo 4)"

usage() {
    cat <<EOF
usage: $0 [--cann PATH] [--vendor NAME] [--build-dir DIR] [--mode auto|modules|msopgen] [--jobs N]
  --cann       CANN toolkit root (default: \$ASCEND_HOME_PATH, \$ASCEND_TOOLKIT_HOME,
               /usr/local/Ascend/ascend-toolkit/latest, /usr/local/Ascend/cann)
  --vendor     vendor name of the package, its directory under vendors/ (default: ${vendor})
  --build-dir  where to build (default: ${build_dir})
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --cann) cann="$2"; shift 2 ;;
        --vendor) vendor="$2"; shift 2 ;;
        --build-dir) build_dir="$2"; shift 2 ;;
        --mode) mode="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

find_cann() {
    local candidate
    for candidate in "${cann}" "${ASCEND_HOME_PATH:-}" "${ASCEND_TOOLKIT_HOME:-}" \
                     /usr/local/Ascend/ascend-toolkit/latest /usr/local/Ascend/cann; do
        if [[ -n "${candidate}" && -d "${candidate}/compiler" ]]; then
            echo "${candidate}"
            return 0
        fi
    done
    return 1
}

if ! cann="$(find_cann)"; then
    echo "build.sh: no CANN toolkit found (looked at --cann, \$ASCEND_HOME_PATH, \$ASCEND_TOOLKIT_HOME," >&2
    echo "          /usr/local/Ascend/ascend-toolkit/latest, /usr/local/Ascend/cann)." >&2
    echo "          The Ascend operators build only where CANN is installed (an Atlas machine)." >&2
    exit 3
fi
# The toolkit's environment (compiler and library paths), unless the caller has already set it up.
if [[ -z "${ASCEND_OPP_PATH:-}" ]]; then
    for env_script in "${cann}/set_env.sh" "${cann}/../set_env.sh" "${cann}/bin/setenv.bash"; do
        if [[ -f "${env_script}" ]]; then
            set +u
            # shellcheck disable=SC1090
            source "${env_script}"
            set -u
            break
        fi
    done
fi

asc_modules="${cann}/compiler/tikcpp/ascendc_kernel_cmake"
if [[ "${mode}" == "auto" ]]; then
    if grep -rqs "npu_op_package" "${asc_modules}" 2>/dev/null; then
        mode="modules"
    else
        mode="msopgen"
    fi
fi
echo "build.sh: CANN ${cann}, mode ${mode}, vendor ${vendor}, build dir ${build_dir}"

# The cache variables of CMakePresets.json as -D options, with the CANN path and vendor of this build; done in
# Python so that a CMake older than 3.19 (no --preset) works too.
preset_options() {
    python3 - "${here}/CMakePresets.json" "${cann}" "${vendor}" "${build_dir}" <<'PY'
import json
import sys

presets, cann, vendor, build_dir = sys.argv[1:5]
variables = json.load(open(presets))["configurePresets"][0]["cacheVariables"]
variables["ASCEND_CANN_PACKAGE_PATH"]["value"] = cann
variables["vendor_name"]["value"] = vendor
variables["CMAKE_INSTALL_PREFIX"]["value"] = build_dir
for name, entry in variables.items():
    print(f"-D{name}:{entry['type']}={entry['value']}")
PY
}

build_with_modules() {
    mkdir -p "${build_dir}"
    mapfile -t options < <(preset_options)
    cmake -S "${here}" -B "${build_dir}" "${options[@]}"
    cmake --build "${build_dir}" --target binary package -j "${jobs}"
}

build_with_msopgen() {
    if ! command -v msopgen >/dev/null 2>&1; then
        echo "build.sh: msopgen not found on PATH (it comes with the CANN toolkit: source its set_env.sh)" >&2
        exit 3
    fi
    local project="${build_dir}/msopgen_project"
    rm -rf "${project}"
    mkdir -p "${build_dir}"
    msopgen gen -i "${here}/gf_ops.json" -c "${GF_MSOPGEN_COMPUTE_UNIT:-ai_core-ascend910b}" -lan cpp -out "${project}"
    # Our sources replace the generated stubs; the generated CMake files and scripts stay (they match this CANN).
    cp "${here}"/op_host/*.cpp "${here}"/op_host/*.h "${project}/op_host/"
    cp "${here}"/op_kernel/*.cpp "${here}"/op_kernel/*.h "${project}/op_kernel/"
    python3 - "${project}/CMakePresets.json" "${cann}" "${vendor}" <<'PY'
import json
import sys

path, cann, vendor = sys.argv[1:4]
presets = json.load(open(path))
variables = presets["configurePresets"][0]["cacheVariables"]
variables["ASCEND_CANN_PACKAGE_PATH"]["value"] = cann
variables["vendor_name"]["value"] = vendor
variables["ASCEND_COMPUTE_UNIT"]["value"] = "ascend910b"
json.dump(presets, open(path, "w"), indent=4)
PY
    (cd "${project}" && bash build.sh)
    mkdir -p "${build_dir}"
    cp "${project}"/build_out/custom_opp_*.run "${build_dir}/"
}

case "${mode}" in
    modules) build_with_modules ;;
    msopgen) build_with_msopgen ;;
    *) echo "build.sh: --mode must be auto, modules or msopgen" >&2; exit 2 ;;
esac

package="$(find "${build_dir}" -maxdepth 1 -name 'custom_opp_*.run' | head -n 1)"
if [[ -z "${package}" ]]; then
    echo "build.sh: the build finished but produced no custom_opp_*.run in ${build_dir}" >&2
    exit 1
fi
echo "build.sh: package ${package}"
echo "build.sh: install with  bash ${package} --install-path=<dir>  then  source <dir>/vendors/${vendor}/bin/set_env.bash"
